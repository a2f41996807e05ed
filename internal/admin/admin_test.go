package admin_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"mesh/identity/identitytest"
	"mesh/internal/admin"
	"mesh/internal/admin/xdsview"
	"mesh/internal/testutil"
	"mesh/xdsclient"
)

// series writes one istio_requests_total line.
func series(reporter, src, dst, version, protocol, code, grpcStatus, policy string, value float64) string {
	return fmt.Sprintf(`istio_requests_total{reporter=%q,source_workload=%q,source_workload_namespace="default",source_canonical_service=%q,source_canonical_revision="v1",destination_service_name=%q,destination_service_namespace="default",destination_workload=%q,destination_canonical_service=%q,destination_canonical_revision=%q,request_protocol=%q,response_code=%q,grpc_response_status=%q,connection_security_policy=%q} %g`+"\n",
		reporter, src, src, dst, dst+"-"+version, dst, version, protocol, code, grpcStatus, policy, value)
}

// metricsServer serves whatever text body holds at the time of the scrape.
type metricsServer struct {
	mu   sync.Mutex
	body string
	srv  *httptest.Server
}

func newMetricsServer(t *testing.T) *metricsServer {
	m := &metricsServer{}
	m.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		m.mu.Lock()
		defer m.mu.Unlock()
		_, _ = io.WriteString(w, "# TYPE istio_requests_total counter\n"+m.body)
	}))
	t.Cleanup(m.srv.Close)
	return m
}

func (m *metricsServer) set(body string) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.body = body
}

func (m *metricsServer) url() string { return m.srv.URL + "/metrics" }

var (
	checkoutID = admin.NodeID("default", "checkout", "v1")
	v1ID       = admin.NodeID("default", "payments", "v1")
	v2ID       = admin.NodeID("default", "payments", "v2")
)

func TestScraperEdgesRatesAndHealth(t *testing.T) {
	ctx := testutil.Context(t)
	checkout, payments := newMetricsServer(t), newMetricsServer(t)
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	s := admin.NewScraper(func() []string { return []string{checkout.url(), payments.url()} },
		admin.WithClock(func() time.Time { return now }))

	// Checkout reports as source; payments as destination, with mTLS on v1
	// and none on v2.
	checkout.set(series("source", "checkout", "payments", "v1", "grpc", "200", "0", "unknown", 900) +
		series("source", "checkout", "payments", "v2", "grpc", "200", "0", "unknown", 95) +
		series("source", "checkout", "payments", "v2", "grpc", "200", "14", "unknown", 5))
	payments.set(series("destination", "checkout", "payments", "v1", "grpc", "200", "0", "mutual_tls", 900) +
		series("destination", "checkout", "payments", "v2", "grpc", "200", "0", "none", 100))
	g, err := s.Graph(ctx)
	if err != nil {
		t.Fatalf("graph: %v", err)
	}
	if len(g.Nodes) != 3 || len(g.Edges) != 2 || len(g.Errors) != 0 {
		t.Fatalf("graph = %+v, want 3 nodes and 2 edges", g)
	}
	e1, ok := g.Edge(checkoutID, v1ID)
	if !ok || e1.Requests != 900 || e1.Rate != 0 || !e1.MutualTLS || e1.Health != admin.HealthHealthy {
		t.Errorf("checkout -> payments v1 = %+v, want 900 requests, mTLS, healthy", e1)
	}
	e2, ok := g.Edge(checkoutID, v2ID)
	if !ok || e2.Requests != 100 || e2.Errors != 5 || e2.ErrorRatio != 0.05 || e2.MutualTLS || e2.Health != admin.HealthDegraded {
		t.Errorf("checkout -> payments v2 = %+v, want 100 requests, 5%% errors, plaintext, degraded", e2)
	}

	// Ten seconds later: v1 served 100 more, v2 failed half of 20 more.
	now = now.Add(10 * time.Second)
	checkout.set(series("source", "checkout", "payments", "v1", "grpc", "200", "0", "unknown", 1000) +
		series("source", "checkout", "payments", "v2", "grpc", "200", "0", "unknown", 105) +
		series("source", "checkout", "payments", "v2", "grpc", "200", "14", "unknown", 15))
	g, err = s.Graph(ctx)
	if err != nil {
		t.Fatalf("graph: %v", err)
	}
	e1, _ = g.Edge(checkoutID, v1ID)
	if e1.Rate != 10 || e1.ErrorRatio != 0 || e1.Health != admin.HealthHealthy {
		t.Errorf("v1 edge = %+v, want 10 rps, no errors", e1)
	}
	e2, _ = g.Edge(checkoutID, v2ID)
	if e2.Rate != 2 || e2.ErrorRatio != 0.5 || e2.Health != admin.HealthFailure {
		t.Errorf("v2 edge = %+v, want 2 rps, 50%% errors, failure", e2)
	}

	// Nothing new: idle.
	now = now.Add(10 * time.Second)
	g, _ = s.Graph(ctx)
	if e1, _ = g.Edge(checkoutID, v1ID); e1.Health != admin.HealthIdle || e1.Rate != 0 {
		t.Errorf("v1 edge after no traffic = %+v, want idle", e1)
	}

	// Polled again 100 ms later, the rate still spans the last window of
	// at least a second: since the scrape 10 s ago, one more request.
	now = now.Add(100 * time.Millisecond)
	checkout.set(series("source", "checkout", "payments", "v1", "grpc", "200", "0", "unknown", 1001) +
		series("source", "checkout", "payments", "v2", "grpc", "200", "0", "unknown", 105) +
		series("source", "checkout", "payments", "v2", "grpc", "200", "14", "unknown", 15))
	g, _ = s.Graph(ctx)
	if e1, _ = g.Edge(checkoutID, v1ID); e1.Rate != 1/10.1 || e1.Health != admin.HealthHealthy {
		t.Errorf("v1 edge polled soon after = %+v, want 1 request over 10.1 s", e1)
	}
}

// TestScraperFirstGraphHasRates: the first graph a Scraper builds on the
// real clock already shows a rate and a p99, not totals and 0 rps: the
// counters grow between its two scrapes a window apart.
func TestScraperFirstGraphHasRates(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute) // hang guard
	defer cancel()
	var mu sync.Mutex
	n := 0
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		mu.Lock()
		n += 100
		count := n
		mu.Unlock()
		// 99 of each 100 calls take at most 5 ms, one up to 50 ms.
		labels := `reporter="source",source_canonical_service="checkout",source_canonical_revision="v1",source_workload_namespace="default",destination_service_namespace="default",destination_canonical_service="payments",destination_canonical_revision="v1",request_protocol="grpc",grpc_response_status="0"`
		fmt.Fprintf(w, "# TYPE istio_requests_total counter\nistio_requests_total{%s} %d\n", labels, count)
		fmt.Fprintf(w, "# TYPE istio_request_duration_milliseconds histogram\n")
		for _, b := range []struct {
			le string
			n  int
		}{{"1", 0}, {"5", count * 99 / 100}, {"50", count}, {"+Inf", count}} {
			fmt.Fprintf(w, "istio_request_duration_milliseconds_bucket{%s,le=%q} %d\n", labels, b.le, b.n)
		}
		fmt.Fprintf(w, "istio_request_duration_milliseconds_sum{%s} %d\nistio_request_duration_milliseconds_count{%s} %d\n", labels, count, labels, count)
	}))
	t.Cleanup(srv.Close)
	s := admin.NewScraper(func() []string { return []string{srv.URL} }, admin.WithRateWindow(50*time.Millisecond))
	t.Cleanup(s.CloseIdleConnections)
	g, err := s.Graph(ctx)
	if err != nil {
		t.Fatal(err)
	}
	e, ok := g.Edge(checkoutID, v1ID)
	if !ok || e.Rate <= 0 || e.Requests != 200 || e.P99Millis != 5 || e.Health != admin.HealthHealthy {
		t.Errorf("first graph's edge = %+v, want a rate over the two scrapes, 200 requests, p99 5 ms", e)
	}
}

func TestScraperHTTPErrorsAndResets(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	good := newMetricsServer(t)
	good.set(series("source", "checkout", "payments", "v1", "http", "503", "", "unknown", 10) +
		series("source", "checkout", "payments", "v1", "http", "404", "", "unknown", 30) +
		series("source", "checkout", "payments", "v1", "http", "200", "", "unknown", 60))
	broken := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "istio_requests_total{reporter=\"source\" 1\n")
	}))
	t.Cleanup(broken.Close)
	missing := httptest.NewServer(http.NotFoundHandler())
	t.Cleanup(missing.Close)

	now := time.Unix(0, 0)
	s := admin.NewScraper(func() []string { return []string{good.url(), broken.URL, missing.URL} },
		admin.WithClock(func() time.Time { return now }))
	g, err := s.Graph(ctx)
	if err != nil {
		t.Fatalf("graph: %v", err)
	}
	if len(g.Errors) != 2 || !strings.Contains(g.Errors[0], broken.URL) || !strings.Contains(g.Errors[1], "404") {
		t.Errorf("errors = %q, want the unparsable and the 404 target named", g.Errors)
	}
	e, ok := g.Edge(checkoutID, v1ID)
	// HTTP: only 5xx count as errors, as Istio's dashboards count them.
	if !ok || e.Requests != 100 || e.Errors != 10 || e.Health != admin.HealthDegraded || e.MutualTLS {
		t.Errorf("edge = %+v, want 100 requests, 10 errors", e)
	}

	// The workload restarted: its counters start over. The rate counts from
	// zero, not negative.
	now = now.Add(5 * time.Second)
	good.set(series("source", "checkout", "payments", "v1", "http", "200", "", "unknown", 20))
	g, _ = s.Graph(ctx)
	if e, _ = g.Edge(checkoutID, v1ID); e.Rate != 4 || e.ErrorRatio != 0 {
		t.Errorf("edge after reset = %+v, want 4 rps", e)
	}

	// A canceled context fails the whole graph.
	cctx, ccancel := context.WithCancel(ctx)
	ccancel()
	if _, err := s.Graph(cctx); !errors.Is(err, context.Canceled) {
		t.Errorf("graph with canceled ctx: %v, want context.Canceled", err)
	}
}

type fixedGraph struct{ g admin.Graph }

func (f fixedGraph) Graph(context.Context) (admin.Graph, error) { return f.g, nil }

func get(t *testing.T, url string) (int, string, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("get %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read %s: %v", url, err)
	}
	return resp.StatusCode, resp.Header.Get("Content-Type"), string(body)
}

func TestHandlerPages(t *testing.T) {
	updated := time.Date(2026, 11, 21, 7, 0, 0, 0, time.UTC)
	var healthy error
	h := admin.NewHandler(admin.Config{
		Metrics: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "up 1\n") }),
		XDS: func() []admin.ResourceView {
			return xdsview.Resources([]xdsclient.ResourceStatus{
				{Type: "listener", Name: "payments:8080", Version: "3", Status: xdsclient.StatusNACKed, UpdatedAt: updated,
					Error:   fmt.Errorf("listener %q: api_listener.route_config_name: empty", "payments:8080"),
					Ignored: []string{"http_filters[1]: envoy.filters.http.lua"}},
				{Type: "cluster", Name: "outbound|8080|v1|payments", Version: "2", Status: xdsclient.StatusAcked, UpdatedAt: updated},
				{Type: "cluster", Name: "gone", Status: xdsclient.StatusDoesNotExist},
			})
		},
		Clusters: func() []admin.ClusterStatus {
			return []admin.ClusterStatus{{Name: "outbound|8080|v1|payments", InFlight: 2, Endpoints: []admin.EndpointStatus{
				{Address: "127.0.0.1:1234", Health: "HEALTHY", InFlight: 2},
				{Address: "127.0.0.1:1235", Health: "HEALTHY", Ejected: true, EjectedUntil: updated},
			}}}
		},
		Graph:   fixedGraph{admin.Graph{Nodes: []admin.Node{{ID: v1ID}}, Edges: []admin.Edge{}}},
		Healthy: func() error { return healthy },
	})
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)

	if code, _, body := get(t, srv.URL+"/healthz"); code != 200 || body != "ok\n" {
		t.Errorf("/healthz = %d %q", code, body)
	}
	healthy = errors.New("draining")
	if code, _, body := get(t, srv.URL+"/healthz"); code != 503 || !strings.Contains(body, "draining") {
		t.Errorf("/healthz while draining = %d %q", code, body)
	}
	if code, _, body := get(t, srv.URL+"/metrics"); code != 200 || body != "up 1\n" {
		t.Errorf("/metrics = %d %q", code, body)
	}

	code, ctype, body := get(t, srv.URL+"/debug/config")
	var config struct{ Resources []admin.ResourceView }
	if err := json.Unmarshal([]byte(body), &config); code != 200 || ctype != "application/json" || err != nil {
		t.Fatalf("/debug/config = %d %s %v\n%s", code, ctype, err, body)
	}
	want := []admin.ResourceView{
		{Type: "listener", Name: "payments:8080", Version: "3", Status: "NACK", UpdatedAt: updated,
			Error: `listener "payments:8080": api_listener.route_config_name: empty`, IgnoredFields: []string{"http_filters[1]: envoy.filters.http.lua"}},
		{Type: "cluster", Name: "outbound|8080|v1|payments", Version: "2", Status: "ACK", UpdatedAt: updated},
		{Type: "cluster", Name: "gone", Status: "DOES_NOT_EXIST"},
	}
	if fmt.Sprint(config.Resources) != fmt.Sprint(want) {
		t.Errorf("/debug/config resources =\n%+v\nwant\n%+v", config.Resources, want)
	}
	if !strings.Contains(body, `"updated_at": "2026-11-21T07:00:00Z"`) || !strings.Contains(body, `"ignored_fields"`) {
		t.Errorf("/debug/config lacks updated_at or ignored_fields:\n%s", body)
	}

	code, _, body = get(t, srv.URL+"/debug/clusters")
	var clusters struct{ Clusters []admin.ClusterStatus }
	if err := json.Unmarshal([]byte(body), &clusters); code != 200 || err != nil || len(clusters.Clusters) != 1 ||
		!clusters.Clusters[0].Endpoints[1].Ejected || clusters.Clusters[0].InFlight != 2 {
		t.Errorf("/debug/clusters = %d %v\n%s", code, err, body)
	}

	if code, ctype, body := get(t, srv.URL+"/debug/graph"); code != 200 || !strings.HasPrefix(ctype, "text/html") ||
		!strings.Contains(body, `fetch("graph.json"`) || strings.Contains(body, "https://") {
		t.Errorf("/debug/graph = %d %s, want a self-contained page polling graph.json", code, ctype)
	} else if poll := fmt.Sprintf("setInterval(refresh, %d)", admin.GraphRefresh.Milliseconds()); !strings.Contains(body, poll) {
		t.Errorf("/debug/graph does not poll every GraphRefresh (%s)", poll)
	}
	code, _, body = get(t, srv.URL+"/debug/graph.json")
	var g admin.Graph
	if err := json.Unmarshal([]byte(body), &g); code != 200 || err != nil || len(g.Nodes) != 1 || g.Nodes[0].ID != v1ID {
		t.Errorf("/debug/graph.json = %d %v\n%s", code, err, body)
	}
	if code, _, _ := get(t, srv.URL+"/nope"); code != 404 {
		t.Errorf("/nope = %d, want 404", code)
	}
}

func TestHandlerUnconfigured(t *testing.T) {
	srv := httptest.NewServer(admin.NewHandler(admin.Config{}))
	t.Cleanup(srv.Close)
	for _, path := range []string{"/metrics", "/debug/config", "/debug/clusters", "/debug/graph", "/debug/graph.json"} {
		if code, _, body := get(t, srv.URL+path); code != 404 || !strings.Contains(body, "not configured") {
			t.Errorf("%s = %d %q, want 404 not configured", path, code, body)
		}
	}
	if code, _, _ := get(t, srv.URL+"/healthz"); code != 200 {
		t.Errorf("/healthz = %d", code)
	}
	// The index links no page that would answer "not configured".
	if code, _, body := get(t, srv.URL+"/"); code != 200 || strings.Contains(body, "debug/") || strings.Contains(body, "metrics") ||
		!strings.Contains(body, `href="healthz"`) {
		t.Errorf("/ = %d %q, want a link to healthz only", code, body)
	}
}

func TestElementID(t *testing.T) {
	if got := admin.ElementID(checkoutID + "->" + v1ID); got != "default_checkout_v1-_default_payments_v1" {
		t.Errorf("ElementID = %q", got)
	}
}

// TestCallersOwnGraphShowsMutualTLS: a caller's own metrics hold only
// source-reported series, whose connection_security_policy is "unknown" as
// in Istio; the lock comes from the principals both sides proved.
func TestCallersOwnGraphShowsMutualTLS(t *testing.T) {
	line := func(version, srcPrincipal, dstPrincipal string, value float64) string {
		return fmt.Sprintf(`istio_requests_total{reporter="source",source_workload="checkout",source_workload_namespace="default",source_canonical_service="checkout",source_canonical_revision="v1",source_principal=%q,destination_principal=%q,destination_service_name="payments",destination_service_namespace="default",destination_workload="payments-%s",destination_canonical_service="payments",destination_canonical_revision=%q,request_protocol="grpc",response_code="200",grpc_response_status="0",connection_security_policy="unknown"} %g`+"\n",
			srcPrincipal, dstPrincipal, version, version, value)
	}
	const checkout, payments = "spiffe://cluster.local/ns/default/sa/checkout", "spiffe://cluster.local/ns/default/sa/payments"
	fams, err := admin.ParseMetrics(strings.NewReader("# TYPE istio_requests_total counter\n" +
		line("v1", checkout, payments, 10) +
		line("v2", checkout, payments, 3) + line("v2", checkout, "unknown", 1)))
	if err != nil {
		t.Fatal(err)
	}
	g := admin.GraphFromMetrics(fams)
	if e, ok := g.Edge(checkoutID, v1ID); !ok || !e.MutualTLS || e.MTLSRatio != 1 {
		t.Errorf("checkout -> v1, both principals proven = %+v, want the mTLS lock", e)
	}
	if e, ok := g.Edge(checkoutID, v2ID); !ok || e.MutualTLS || e.MTLSRatio != 0.75 {
		t.Errorf("checkout -> v2, one call in four without a server principal = %+v, want no lock, ratio 0.75", e)
	}
}

// TestConfigViewShowsSecretsWithoutKeys: a secret handed to xdsview.Resources
// with its key still in it (as a buggy source might) shows the
// certificate's ID and expiry, and the key appears nowhere in the page.
func TestConfigViewShowsSecretsWithoutKeys(t *testing.T) {
	ca, err := identitytest.NewCA("example.org")
	if err != nil {
		t.Fatal(err)
	}
	svid, err := ca.Issue("spiffe://example.org/ns/default/sa/a", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	chain, key, err := svid.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(key), "PRIVATE KEY") {
		t.Fatalf("test key %q is not PEM", key)
	}
	h := admin.NewHandler(admin.Config{XDS: func() []admin.ResourceView {
		return xdsview.Resources([]xdsclient.ResourceStatus{{Type: "secret", Name: "default", Status: xdsclient.StatusAcked,
			Value: &xdsclient.Secret{Name: "default", Certificate: &xdsclient.TLSCertificate{ChainPEM: chain, KeyPEM: key}}}})
	}})
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/debug/config", nil))
	page := rec.Body.String()
	if !strings.Contains(page, `"spiffe_id": "spiffe://example.org/ns/default/sa/a"`) || !strings.Contains(page, `"not_after"`) {
		t.Errorf("/debug/config lacks the certificate's ID and expiry:\n%s", page)
	}
	if strings.Contains(page, "PRIVATE KEY") || strings.Contains(page, string(key[40:80])) {
		t.Errorf("/debug/config shows the key:\n%s", page)
	}
}
