package main

import (
	"context"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"mesh/controlplane"
)

func runProxyStatus(ctx context.Context, e *env, args []string) error {
	f := newFlags(e, "proxy-status [-o json|yaml]", "  meshctl proxy-status -state ./cp-state\n  meshctl proxy-status -state ./cp-state -o json | jq '.[] | select(.types[].state == \"NACKED\")'")
	api := addAPIFlags(f, e)
	out := addOutputFlag(f)
	if err := f.parseNone(args, out); err != nil {
		return err
	}
	var st []controlplane.ProxyStatus
	if err := api.get(ctx, "/api/v1/proxy-status", &st); err != nil {
		return err
	}
	nacked := false
	for _, p := range st {
		for _, t := range p.Types {
			nacked = nacked || t.State == "NACKED"
		}
	}
	err := out.print(e.stdout, st, func() {
		tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "WORKLOAD\tIDENTITY\tLDS\tRDS\tCDS\tEDS\tSDS\tLAST SEEN")
		var errs []string
		for _, p := range st {
			state := map[string]string{}
			for _, t := range p.Types {
				state[t.Type] = t.State
				switch {
				case t.Error != "":
					errs = append(errs, fmt.Sprintf("%s %s NACK (sent %s, running %s): %s", p.Workload, t.Type, t.Sent, orDash(t.Acked), t.Error))
				case t.State == "STALE":
					// The table says only that they differ: say by how much.
					errs = append(errs, fmt.Sprintf("%s %s STALE: sent %s, ACKed %s", p.Workload, t.Type, t.Sent, orDash(t.Acked)))
				}
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s ago\n", p.Workload, orDash(p.Identity), orDash(state["LDS"]), orDash(state["RDS"]),
				orDash(state["CDS"]), orDash(state["EDS"]), orDash(state["SDS"]), time.Since(p.LastSeen).Round(time.Second))
		}
		tw.Flush()
		if len(st) == 0 {
			fmt.Fprintln(e.stdout, "no workload connected")
		}
		for _, s := range errs {
			fmt.Fprintln(e.stdout, s)
		}
	})
	if err != nil {
		return err
	}
	if nacked {
		return errFindings
	}
	return nil
}

func orDash(s string) string {
	if strings.TrimSpace(s) == "" {
		return "-"
	}
	return s
}
