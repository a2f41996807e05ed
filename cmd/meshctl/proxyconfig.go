package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"text/tabwriter"
	"time"

	"mesh/controlplane"
)

// The workload's admin pages, as admin.Serve serves them next to
// /metrics: only the fields shown here.
type resourceView struct {
	Type    string `json:"type"`
	Name    string `json:"name"`
	Version string `json:"version"`
	Status  string `json:"status"`
	Error   string `json:"error,omitempty"`
}

type clusterView struct {
	Channel   string `json:"channel,omitempty"`
	Name      string `json:"name"`
	InFlight  int64  `json:"in_flight"`
	Endpoints []struct {
		Address  string `json:"address"`
		Weight   uint32 `json:"weight,omitempty"`
		Health   string `json:"health"`
		Ejected  bool   `json:"ejected"`
		InFlight int64  `json:"in_flight"`
	} `json:"endpoints"`
}

// configKinds maps proxy-config's kinds to the resource types of the
// workload's /debug/config.
var configKinds = map[string]string{"listeners": "listener", "routes": "route config", "clusters": "cluster", "all": ""}

func runProxyConfig(ctx context.Context, e *env, args []string) error {
	f := newFlags(e, "proxy-config listeners|routes|clusters|all|endpoints WORKLOAD [-o json|yaml]",
		"  meshctl proxy-config endpoints checkout -state ./cp-state     # health, ejection, in-flight per endpoint\n"+
			"  meshctl proxy-config all default/checkout -state ./cp-state -o json")
	api := addAPIFlags(f, e)
	out := addOutputFlag(f)
	rest, err := f.parse(args)
	if err != nil {
		return err
	}
	if err := out.check(); err != nil {
		return err
	}
	if len(rest) != 2 {
		return usagef("want a kind and a workload, e.g. meshctl proxy-config endpoints checkout")
	}
	kind, workload := rest[0], rest[1]
	typ, isConfig := configKinds[kind]
	if !isConfig && kind != "endpoints" {
		return usagef("kind %q: want listeners, routes, clusters, all or endpoints", kind)
	}
	if !strings.Contains(workload, "/") {
		workload = "default/" + workload
	}
	var st controlplane.DaemonStatus
	if err := api.get(ctx, "/api/v1/status", &st); err != nil {
		return err
	}
	base := ""
	found := false
	for _, w := range st.Workloads {
		if w.Workload.Namespace+"/"+w.Workload.Name == workload {
			found, base = true, strings.TrimSuffix(w.MetricsURL, "/metrics")
		}
	}
	switch {
	case !found:
		return fmt.Errorf("workload %s: not enrolled with this control plane (see meshctl status)", workload)
	case base == "":
		return fmt.Errorf("workload %s: enrolled without -metrics, so its admin pages are unknown", workload)
	}
	if isConfig {
		var page struct {
			Resources []resourceView `json:"resources"`
		}
		if err := getWorkloadPage(ctx, base+"/debug/config", &page); err != nil {
			return fmt.Errorf("workload %s: %w", workload, err)
		}
		var shown []resourceView
		for _, v := range page.Resources {
			if typ == "" || v.Type == typ {
				shown = append(shown, v)
			}
		}
		if shown == nil {
			shown = []resourceView{}
		}
		return out.print(e.stdout, shown, func() {
			tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "TYPE\tNAME\tVERSION\tSTATUS")
			for _, v := range shown {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", v.Type, v.Name, orDash(v.Version), v.Status)
			}
			tw.Flush()
			for _, v := range shown {
				if v.Error != "" {
					fmt.Fprintf(e.stdout, "%s %s: %s\n", v.Type, v.Name, v.Error)
				}
			}
		})
	}
	var page struct {
		Clusters []clusterView `json:"clusters"`
	}
	if err := getWorkloadPage(ctx, base+"/debug/clusters", &page); err != nil {
		return fmt.Errorf("workload %s: %w", workload, err)
	}
	clusters := page.Clusters
	if clusters == nil {
		clusters = []clusterView{}
	}
	return out.print(e.stdout, clusters, func() {
		tw := tabwriter.NewWriter(e.stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "CLUSTER\tENDPOINT\tWEIGHT\tHEALTH\tEJECTED\tIN FLIGHT")
		for _, c := range clusters {
			for _, ep := range c.Endpoints {
				fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%v\t%d\n", c.Name, ep.Address, ep.Weight, ep.Health, ep.Ejected, ep.InFlight)
			}
		}
		tw.Flush()
	})
}

func getWorkloadPage(ctx context.Context, url string, v any) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("admin pages unreachable: %w", unwrapURLError(err))
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("%s: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("%s: %s", url, resp.Status)
	}
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/json") {
		return fmt.Errorf("%s: answers %q, not the mesh's admin pages (is -metrics the URL admin.Serve serves?)", url, ct)
	}
	if err := json.Unmarshal(body, v); err != nil {
		return fmt.Errorf("%s: %w", url, err)
	}
	return nil
}
