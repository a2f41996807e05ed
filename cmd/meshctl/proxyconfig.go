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
	pages "mesh/internal/admin"
)

// The workload's admin pages, as admin.Serve serves them next to
// /metrics: only the fields shown here. Config stays as the page wrote
// it for -o json|yaml and is decoded per kind for the tables.
type resourceView struct {
	Type    string          `json:"type"`
	Name    string          `json:"name"`
	Version string          `json:"version"`
	Status  string          `json:"status"`
	Error   string          `json:"error,omitempty"`
	Config  json.RawMessage `json:"config,omitempty"`
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
var configKinds = map[string]string{
	"listeners": "listener", "routes": "route_config", "clusters": "cluster", "secrets": "secret", "all": "",
}

// secretsView is proxy-config secrets: the workload's certificates (from
// its certificate providers) and the SDS secrets it holds, never keys.
type secretsView struct {
	Certificates []pages.CertificateView `json:"certificates"`
	Secrets      []resourceView          `json:"secrets"`
}

func runProxyConfig(ctx context.Context, e *env, args []string) error {
	f := newFlags(e, "proxy-config listeners|routes|clusters|endpoints|secrets|all WORKLOAD [-o json|yaml]",
		"  meshctl proxy-config routes checkout -state ./cp-state        # matchers, weights, timeouts, retries, faults\n"+
			"  meshctl proxy-config clusters checkout -state ./cp-state      # LB policy, circuit breaker, outlier detection, TLS\n"+
			"  meshctl proxy-config endpoints checkout -state ./cp-state     # health, ejection, in-flight per endpoint\n"+
			"  meshctl proxy-config secrets checkout -state ./cp-state       # SPIFFE ID, serial, expiry, trust bundle (never keys)\n"+
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
		return usagef("kind %q: want listeners, routes, clusters, endpoints, secrets or all", kind)
	}
	workload, base, err := workloadAdmin(ctx, api, workload)
	if err != nil {
		return err
	}
	if isConfig {
		var page struct {
			Resources    []resourceView          `json:"resources"`
			Certificates []pages.CertificateView `json:"certificates"`
		}
		if err := getWorkloadPage(ctx, base+"/debug/config", &page); err != nil {
			return fmt.Errorf("workload %s: %w", workload, err)
		}
		shown := []resourceView{}
		for _, v := range page.Resources {
			if typ == "" || v.Type == typ {
				shown = append(shown, v)
			}
		}
		if kind == "secrets" {
			sv := secretsView{Certificates: page.Certificates, Secrets: shown}
			if sv.Certificates == nil {
				sv.Certificates = []pages.CertificateView{}
			}
			return out.print(e.stdout, sv, func() { printSecrets(e.stdout, sv) })
		}
		return out.print(e.stdout, shown, func() { printConfig(e.stdout, kind, shown) })
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

// printConfig prints the resources of one kind as a table of what is in
// force, then any errors in full.
func printConfig(w io.Writer, kind string, shown []resourceView) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	switch kind {
	case "routes":
		fmt.Fprintln(tw, "ROUTE CONFIG\tDOMAINS\tMATCH\tDESTINATION\tTIMEOUT\tRETRIES\tFAULTS")
		for _, v := range shown {
			var rc pages.RouteConfigView
			_ = json.Unmarshal(v.Config, &rc) // a resource without a value in force shows no routes
			for _, vh := range rc.VirtualHosts {
				for _, r := range vh.Routes {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", v.Name, strings.Join(vh.Domains, ","), r.Match,
						destination(r), orDash(r.Timeout), retries(r.Retries), faults(r.Faults))
				}
			}
		}
	case "clusters":
		fmt.Fprintln(tw, "CLUSTER\tSTATUS\tLB\tMAX REQUESTS\tOUTLIER DETECTION\tTLS")
		for _, v := range shown {
			var c pages.ClusterConfig
			_ = json.Unmarshal(v.Config, &c)
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", v.Name, v.Status, orDash(c.LBPolicy),
				orDash(count(c.MaxRequests)), outlier(c.OutlierDetection), upstreamTLS(c.TLS))
		}
	case "listeners":
		fmt.Fprintln(tw, "LISTENER\tSTATUS\tADDRESS\tROUTE CONFIG\tHTTP FILTERS\tFILTER CHAINS")
		for _, v := range shown {
			var l pages.ListenerConfig
			_ = json.Unmarshal(v.Config, &l)
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", v.Name, v.Status, orDash(l.Address), orDash(l.RouteConfig),
				orDash(strings.Join(l.HTTPFilters, ",")), orDash(strings.Join(l.FilterChains, "; ")))
		}
	default:
		fmt.Fprintln(tw, "TYPE\tNAME\tVERSION\tSTATUS")
		for _, v := range shown {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", v.Type, v.Name, orDash(v.Version), v.Status)
		}
	}
	tw.Flush()
	for _, v := range shown {
		if v.Error != "" {
			fmt.Fprintf(w, "%s %s: %s\n", v.Type, v.Name, v.Error)
		}
	}
}

func printSecrets(w io.Writer, sv secretsView) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "PROVIDER\tSPIFFE ID\tSERIAL\tNOT BEFORE\tNOT AFTER\tTRUST BUNDLE")
	for _, c := range sv.Certificates {
		var roots []string
		for _, r := range c.TrustBundle {
			roots = append(roots, fmt.Sprintf("%s (serial %s, until %s)", r.Subject, r.Serial, r.NotAfter.Format(time.RFC3339)))
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", c.Provider, c.SPIFFEID, c.Serial,
			c.NotBefore.Format(time.RFC3339), c.NotAfter.Format(time.RFC3339), orDash(strings.Join(roots, "; ")))
	}
	for _, s := range sv.Secrets {
		var sc pages.SecretConfig
		_ = json.Unmarshal(s.Config, &sc)
		if c := sc.Certificate; c != nil {
			fmt.Fprintf(tw, "sds:%s\t%s\t%s\t%s\t%s\t-\n", s.Name, c.SPIFFEID, c.Serial,
				c.NotBefore.Format(time.RFC3339), c.NotAfter.Format(time.RFC3339))
		} else if len(sc.TrustDomains) > 0 {
			fmt.Fprintf(tw, "sds:%s\t-\t-\t-\t-\troots of %s\n", s.Name, strings.Join(sc.TrustDomains, ","))
		}
	}
	tw.Flush()
}

func destination(r pages.RouteView) string {
	if len(r.Weighted) == 0 {
		return orDash(r.Cluster)
	}
	legs := make([]string, 0, len(r.Weighted))
	for _, w := range r.Weighted {
		legs = append(legs, fmt.Sprintf("%s=%d", w.Cluster, w.Weight))
	}
	return strings.Join(legs, " ")
}

func retries(r *pages.RetryView) string {
	if r == nil {
		return "-"
	}
	s := fmt.Sprintf("%d on %s", r.Attempts, strings.Join(r.On, ","))
	if r.PerTryTimeout != "" {
		s += " per try " + r.PerTryTimeout
	}
	return s
}

func faults(fs []pages.FaultView) string {
	var out []string
	for _, f := range fs {
		if f.Delay != "" {
			out = append(out, "delay "+f.Delay+" "+f.DelayPercent)
		}
		if f.Abort != "" {
			out = append(out, "abort "+f.Abort+" "+f.AbortPercent)
		}
	}
	return orDash(strings.Join(out, ", "))
}

func outlier(o *pages.OutlierView) string {
	if o == nil {
		return "-"
	}
	s := fmt.Sprintf("every %s, eject %s, max %d%%", o.Interval, o.BaseEjectionTime, o.MaxEjectionPercent)
	if o.Consecutive5xx > 0 {
		s += fmt.Sprintf(", %d consecutive 5xx", o.Consecutive5xx)
	}
	return s
}

func upstreamTLS(t *pages.UpstreamTLSView) string {
	if t == nil {
		return "plaintext"
	}
	s := "mTLS"
	if t.Identity == "" {
		s = "TLS"
	}
	if len(t.SubjectAltNames) > 0 {
		s += " SAN " + strings.Join(t.SubjectAltNames, ",")
	}
	return s
}

func count(n uint32) string {
	if n == 0 {
		return ""
	}
	return fmt.Sprint(n)
}

// workloadAdmin finds an enrolled workload ("name" in namespace default,
// or "namespace/name") and the base URL of its admin pages, which
// admin.Serve serves beside the /metrics URL it was enrolled with.
func workloadAdmin(ctx context.Context, api *apiFlags, workload string) (name, base string, err error) {
	if !strings.Contains(workload, "/") {
		workload = "default/" + workload
	}
	var st controlplane.DaemonStatus
	if err := api.get(ctx, "/api/v1/status", &st); err != nil {
		return "", "", err
	}
	found := false
	for _, w := range st.Workloads {
		if w.Workload.Namespace+"/"+w.Workload.Name == workload {
			found, base = true, strings.TrimSuffix(w.MetricsURL, "/metrics")
		}
	}
	switch {
	case !found:
		return "", "", fmt.Errorf("workload %s: not enrolled with this control plane (see meshctl status)", workload)
	case base == "":
		return "", "", fmt.Errorf("workload %s: enrolled without -metrics, so its admin pages are unknown", workload)
	}
	return workload, base, nil
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
