package main

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"mesh/controlplane"
	"mesh/internal/shop"
)

// policyYAML gives payments a route with a timeout, retries and a fault
// that never fires (0%), and a cluster policy with least_request, a
// circuit breaker and outlier detection, on top of the 90/10 split.
var policyYAML = `apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata:
  name: default
  namespace: default
spec:
  mtls:
    mode: STRICT
---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata:
  name: payments
  namespace: default
spec:
  host: ` + shop.PaymentsHost + `
  trafficPolicy:
    loadBalancer:
      simple: LEAST_REQUEST
    connectionPool:
      http:
        http2MaxRequests: 77
    outlierDetection:
      consecutive5xxErrors: 5
      interval: 7s
      baseEjectionTime: 30s
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata:
  name: payments
  namespace: default
spec:
  hosts:
  - ` + shop.PaymentsHost + `
  http:
  - timeout: 3s
    retries:
      attempts: 2
      perTryTimeout: 1s
      retryOn: unavailable
    fault:
      abort:
        percentage:
          value: 0
        grpcStatus: UNAVAILABLE
    route:
    - destination:
        host: ` + shop.PaymentsHost + `
        subset: v1
      weight: 90
    - destination:
        host: ` + shop.PaymentsHost + `
        subset: v2
      weight: 10
`

// TestProxyConfigShowsWhatIsInForce: proxy-config reads checkout's own
// admin pages and shows its routes (weights, timeout, retries), clusters
// (LB policy, circuit breaker, outlier detection, TLS SANs) and
// certificate (SPIFFE ID, serial, expiry, trust bundle), and no private
// key appears in any of its output nor in /debug/config.
func TestProxyConfigShowsWhatIsInForce(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
	defer cancel()
	m := newTestMesh(t, ctx, 0)
	writeConfig(t, m.cfg, "mesh.yaml", []byte(policyYAML))

	// The control plane takes the edit and checkout ACKs it. Routes and
	// clusters are separate resources: wait for each.
	routes := waitConfig(t, ctx, m.state, "routes", "3s")
	var outputs []string
	keep := func(s string) string { outputs = append(outputs, s); return s }
	keep(routes)
	clusters := waitConfig(t, ctx, m.state, "clusters", "least_request")
	keep(clusters)
	secrets := keep(must(t, "proxy-config", "secrets", "checkout", "-state", m.state))
	for _, kind := range []string{"listeners", "endpoints", "all"} {
		keep(must(t, "proxy-config", kind, "checkout", "-state", m.state))
	}
	for _, kind := range []string{"listeners", "routes", "clusters", "endpoints", "secrets", "all"} {
		keep(must(t, "proxy-config", kind, "checkout", "-state", m.state, "-o", "json"))
		keep(must(t, "proxy-config", kind, "checkout", "-state", m.state, "-o", "yaml"))
	}

	golden(t, "proxy-config-routes", maskConfig(routes, m.tmp))
	golden(t, "proxy-config-clusters", maskConfig(clusters, m.tmp))
	golden(t, "proxy-config-secrets", maskConfig(secrets, m.tmp))

	// The same, as data: the route's weights and timeout, the cluster's
	// policy and SANs, the certificate's ID and expiry.
	var rs []struct {
		Name   string
		Config struct {
			VirtualHosts []struct {
				Routes []struct {
					Timeout  string
					Weighted []struct {
						Cluster string
						Weight  uint32
					} `json:"weighted_clusters"`
					Retries *struct {
						Attempts uint32 `json:"num_retries"`
					}
				}
			} `json:"virtual_hosts"`
		}
	}
	if err := json.Unmarshal([]byte(must(t, "proxy-config", "routes", "checkout", "-state", m.state, "-o", "json")), &rs); err != nil {
		t.Fatal(err)
	}
	found := false
	for _, r := range rs {
		for _, vh := range r.Config.VirtualHosts {
			for _, rt := range vh.Routes {
				if rt.Timeout == "3s" && len(rt.Weighted) == 2 && rt.Weighted[0].Weight == 90 && rt.Weighted[1].Weight == 10 &&
					strings.Contains(rt.Weighted[1].Cluster, "|v2|payments") && rt.Retries != nil && rt.Retries.Attempts == 2 {
					found = true
				}
			}
		}
	}
	if !found {
		t.Errorf("proxy-config routes -o json: %+v\nwant a route with timeout 3s, 2 retries and v1=90 v2=10", rs)
	}
	var cs []struct {
		Name   string
		Config struct {
			LBPolicy    string `json:"lb_policy"`
			MaxRequests uint32 `json:"max_requests"`
			TLS         *struct {
				SANs []string `json:"subject_alt_names"`
			}
		}
	}
	if err := json.Unmarshal([]byte(must(t, "proxy-config", "clusters", "checkout", "-state", m.state, "-o", "json")), &cs); err != nil {
		t.Fatal(err)
	}
	found = false
	for _, c := range cs {
		if c.Name == "outbound|8080|v2|"+shop.PaymentsHost && c.Config.LBPolicy == "least_request" && c.Config.MaxRequests == 77 &&
			c.Config.TLS != nil && strings.Contains(strings.Join(c.Config.TLS.SANs, ","), "spiffe://cluster.local/ns/default/sa/payments") {
			found = true
		}
	}
	if !found {
		t.Errorf("proxy-config clusters -o json: %+v\nwant payments v2 with least_request, max 77 and the payments SAN", cs)
	}
	var sv secretsView
	if err := json.Unmarshal([]byte(must(t, "proxy-config", "secrets", "checkout", "-state", m.state, "-o", "json")), &sv); err != nil {
		t.Fatal(err)
	}
	if len(sv.Certificates) == 0 || sv.Certificates[0].SPIFFEID != "spiffe://cluster.local/ns/default/sa/checkout" ||
		!sv.Certificates[0].NotAfter.After(time.Now()) || sv.Certificates[0].Serial == "" || len(sv.Certificates[0].TrustBundle) == 0 {
		t.Errorf("proxy-config secrets -o json: %+v\nwant checkout's SPIFFE ID, a serial, an expiry ahead and a trust bundle", sv)
	}

	// Listeners: the outbound listener for payments, naming its routes.
	var ls []struct {
		Name   string
		Status string
		Config struct {
			RouteConfig string `json:"route_config"`
		}
	}
	if err := json.Unmarshal([]byte(must(t, "proxy-config", "listeners", "checkout", "-state", m.state, "-o", "json")), &ls); err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(ls, func(l struct {
		Name   string
		Status string
		Config struct {
			RouteConfig string `json:"route_config"`
		}
	}) bool {
		return l.Name == shop.PaymentsHost+":8080" && l.Status == "ACK" && l.Config.RouteConfig == shop.PaymentsHost+":8080"
	}) {
		t.Errorf("proxy-config listeners -o json: %+v\nwant payments' listener ACKed, naming its route config", ls)
	}
	// Endpoints: each with its health, ejection and in-flight count, as
	// checkout's balancer holds them.
	var eps []clusterView
	if err := json.Unmarshal([]byte(must(t, "proxy-config", "endpoints", "checkout", "-state", m.state, "-o", "json")), &eps); err != nil {
		t.Fatal(err)
	}
	healthy := 0
	for _, c := range eps {
		for _, ep := range c.Endpoints {
			if strings.Contains(c.Name, "|payments") && ep.Health == "READY" && !ep.Ejected && ep.InFlight >= 0 {
				healthy++
			}
		}
	}
	if healthy < 2 {
		t.Errorf("proxy-config endpoints -o json: %+v\nwant payments v1's and v2's endpoints READY, not ejected", eps)
	}
	if out := must(t, "proxy-config", "endpoints", "checkout", "-state", m.state, "-o", "yaml"); !strings.Contains(out, "in_flight:") || !strings.Contains(out, "ejected: false") {
		t.Errorf("proxy-config endpoints -o yaml lacks in-flight counts or ejection:\n%s", out)
	}

	// /debug/config itself shows the same, and never a key.
	var st controlplane.DaemonStatus
	if err := json.Unmarshal([]byte(must(t, "status", "-state", m.state, "-o", "json")), &st); err != nil {
		t.Fatal(err)
	}
	for _, w := range st.Workloads {
		if w.Workload.Name != "checkout" {
			continue
		}
		resp, err := http.Get(strings.TrimSuffix(w.MetricsURL, "/metrics") + "/debug/config")
		if err != nil {
			t.Fatal(err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatal(err)
		}
		page := keep(string(body))
		for _, want := range []string{`"timeout": "3s"`, `"lb_policy": "least_request"`, `"spiffe_id": "spiffe://cluster.local/ns/default/sa/checkout"`, `"not_after"`, `"trust_bundle"`, `"route_config"`, `"outlier_detection"`} {
			if !strings.Contains(page, want) {
				t.Errorf("/debug/config lacks %s", want)
			}
		}
	}
	if len(outputs) != 19 {
		t.Errorf("checked %d outputs for keys, want 19 (is checkout's /debug/config missing?)", len(outputs))
	}
	for i, o := range outputs {
		if strings.Contains(o, "PRIVATE KEY") {
			t.Errorf("output %d holds a private key:\n%s", i, o)
		}
	}
}

// maskConfig masks what changes from run to run in proxy-config's
// tables: serials, fingerprints and times besides mask's.
func maskConfig(s string, dirs ...string) string {
	s = mask(s, dirs...)
	s = regexp.MustCompile(`\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(Z|[+-]\d\d:\d\d)`).ReplaceAllString(s, "<TIME>")
	s = regexp.MustCompile(`(?i)serial [0-9a-f]+`).ReplaceAllString(s, "serial <SERIAL>")
	s = regexp.MustCompile(`(spiffe://\S+\s+)[0-9a-f]+`).ReplaceAllString(s, "${1}<SERIAL>")
	// Tables align to their widest cell, which masking changes.
	return regexp.MustCompile(` {2,}`).ReplaceAllString(s, "  ")
}

// waitConfig polls proxy-config KIND checkout until its output holds want.
func waitConfig(t *testing.T, ctx context.Context, state, kind, want string) string {
	t.Helper()
	for {
		out := must(t, "proxy-config", kind, "checkout", "-state", state)
		if strings.Contains(out, want) {
			return out
		}
		if ctx.Err() != nil {
			t.Fatalf("checkout's %s never showed %q:\n%s", kind, want, out)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
