package main

import (
	"context"
	"fmt"
	"net/url"
	"os/exec"
	"text/tabwriter"
	"time"

	"mesh/controlplane"
)

func runTop(ctx context.Context, e *env, args []string) error {
	f := newFlags(e, "top [-window 5s] [-o json|yaml]", "  meshctl top -state ./cp-state -window 10s")
	api := addAPIFlags(f, e)
	out := addOutputFlag(f)
	window := f.Duration("window", 5*time.Second, "how long to measure (the control plane scrapes the workloads' metrics at its start and end)")
	if err := f.parseNone(args, out); err != nil {
		return err
	}
	if *window <= 0 || *window > 10*time.Minute {
		return usagef("-window %v: want (0, 10m]", *window)
	}
	c, err := api.client()
	if err != nil {
		return err
	}
	c.http.Timeout = *window + time.Minute
	var edges []controlplane.EdgeStats
	if err := c.do(ctx, "GET", "/api/v1/top?window="+url.QueryEscape(window.String()), nil, &edges); err != nil {
		return err
	}
	return out.print(e.stdout, edges, func() {
		tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "SOURCE\tDESTINATION\tRPS\tSUCCESS\tP50\tP99\tMTLS")
		for _, ed := range edges {
			mtls := "no"
			if ed.MutualTLS {
				mtls = "yes"
			}
			fmt.Fprintf(tw, "%s\t%s\t%.1f\t%.2f%%\t%s\t%s\t%s\n", ed.Source, ed.Destination, ed.RPS, 100*ed.SuccessRate, millis(ed.P50Millis), millis(ed.P99Millis), mtls)
		}
		tw.Flush()
		if len(edges) == 0 {
			fmt.Fprintf(e.stdout, "no traffic in %v (workloads report metrics when enrolled with meshctl bootstrap -metrics)\n", *window)
		}
	})
}

func millis(v float64) string {
	if v < 0 {
		return "slow" // beyond the histogram's last bound
	}
	return fmt.Sprintf("≤%gms", v)
}

func runDashboard(ctx context.Context, e *env, args []string) error {
	f := newFlags(e, "dashboard [-open=false]", "  meshctl dashboard -state ./cp-state   # needs meshctl controlplane -admin ADDR")
	api := addAPIFlags(f, e)
	open := f.Bool("open", true, "open it in a browser, where one exists")
	if err := f.parseNone(args, nil); err != nil {
		return err
	}
	var st controlplane.DaemonStatus
	if err := api.get(ctx, "/api/v1/status", &st); err != nil {
		return err
	}
	if st.AdminURL == "" {
		return fmt.Errorf("the control plane serves no admin pages: start it with -admin ADDR, e.g. -admin 127.0.0.1:15090")
	}
	page := st.AdminURL + "/debug/graph"
	fmt.Fprintln(e.stdout, page)
	if *open && (e.getenv("DISPLAY") != "" || e.getenv("WAYLAND_DISPLAY") != "") {
		if opener, err := exec.LookPath("xdg-open"); err == nil {
			cmd := exec.Command(opener, page)
			if err := cmd.Start(); err == nil {
				_ = cmd.Process.Release() // the browser outlives meshctl
			}
		}
	}
	return nil
}
