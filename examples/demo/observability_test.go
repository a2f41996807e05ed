package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/trace/noop"

	"mesh/internal/admin"
	"mesh/internal/shop"
)

const (
	prometheusBinary = "/usr/bin/prometheus"
	chromiumBinary   = "/usr/bin/chromium"
)

// requireTool skips the test, loudly, when a real tool it drives is not
// installed, except in CI (CI=true), where its absence is a failure:
// .ci/run installs it there.
func requireTool(t *testing.T, path, debianPackage string) {
	t.Helper()
	if _, err := os.Stat(path); err == nil {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s is not installed; CI must install the Debian package %q (see .ci/run)", path, debianPackage)
	}
	t.Skipf("\n\n!!! SKIPPED: %s IS NOT INSTALLED, SO THIS TEST DID NOT RUN. !!!\n"+
		"!!! Install it with: apt-get update && apt-get install -y %s !!!\n", path, debianPackage)
}

// startTraffic starts the demo's mesh with a 50/50 split and steady
// traffic from checkout, one call in 2*flakyEvery failing, until the test
// ends.
func startTraffic(t *testing.T, ctx context.Context) *world {
	t.Helper()
	logger := slog.New(slog.NewTextHandler(io.Discard, nil))
	w, err := startWorld(ctx, logger, noop.NewTracerProvider())
	if err != nil {
		t.Fatalf("starting the mesh: %v", err)
	}
	t.Cleanup(w.close)
	if err := w.cp.Apply(shop.MeshYAML(50, 50)); err != nil {
		t.Fatal(err)
	}
	if err := shop.WaitFor(ctx, w.checkout, 1, func(r shop.Reply) bool { return r.Version == "v2" }); err != nil {
		t.Fatalf("payments v2 never answered: %v", err)
	}
	stop := sendTraffic(w.checkout, 4, 2*time.Millisecond)
	t.Cleanup(stop)
	return w
}

// freePort asks the OS for a free 127.0.0.1 port. Another process may take
// it before Prometheus binds it; the caller retries.
func freePort(t *testing.T) int {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	return lis.Addr().(*net.TCPAddr).Port
}

// startPrometheus runs the real Prometheus, scraping targets every second,
// and returns its base URL once it is ready.
func startPrometheus(t *testing.T, ctx context.Context, targets []string) string {
	t.Helper()
	dir := t.TempDir()
	var quoted []string
	for _, target := range targets {
		quoted = append(quoted, strconv.Quote(target))
	}
	config := fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
- job_name: mesh
  static_configs:
  - targets: [%s]
`, strings.Join(quoted, ", "))
	configPath := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(configPath, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	var lastErr error
	for attempt := range 5 {
		base := fmt.Sprintf("http://127.0.0.1:%d", freePort(t))
		var output bytes.Buffer
		cmd := exec.Command(prometheusBinary,
			"--config.file="+configPath,
			"--storage.tsdb.path="+filepath.Join(dir, fmt.Sprintf("data-%d", attempt)),
			"--web.listen-address="+strings.TrimPrefix(base, "http://"),
			"--log.level=warn")
		cmd.Stdout, cmd.Stderr = &output, &output
		if err := cmd.Start(); err != nil {
			t.Fatalf("starting prometheus: %v", err)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		stop := func() {
			_ = cmd.Process.Kill()
			<-exited
		}
		if err := waitReady(ctx, base+"/-/ready", exited); err != nil {
			stop()
			lastErr = fmt.Errorf("%w\n%s", err, output.String())
			if ctx.Err() != nil {
				break
			}
			continue // most likely the port was taken: try another
		}
		t.Cleanup(func() {
			stop()
			if t.Failed() {
				t.Logf("prometheus output:\n%s", output.String())
			}
		})
		t.Logf("prometheus at %s, config:\n%s", base, config)
		return base
	}
	t.Fatalf("prometheus never became ready: %v", lastErr)
	return ""
}

// waitReady polls url until it answers 200, the process exits or ctx ends.
func waitReady(ctx context.Context, url string, exited <-chan error) error {
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if resp, err := http.DefaultClient.Do(req); err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case err := <-exited:
			return fmt.Errorf("prometheus exited: %v", err)
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// sample is one series of an instant query's vector.
type sample struct {
	Metric map[string]string
	Value  float64
}

// promQuery runs an instant query through Prometheus's HTTP API.
func promQuery(ctx context.Context, base, query string) ([]sample, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/api/v1/query?query="+url.QueryEscape(query), nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	var body struct {
		Status string
		Error  string
		Data   struct {
			ResultType string
			Result     []struct {
				Metric map[string]string
				Value  [2]any
			}
		}
	}
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return nil, fmt.Errorf("query %s: decoding: %w", query, err)
	}
	if body.Status != "success" || body.Data.ResultType != "vector" {
		return nil, fmt.Errorf("query %s: %s %s (%s)", query, body.Status, body.Error, body.Data.ResultType)
	}
	var out []sample
	for _, r := range body.Data.Result {
		text, _ := r.Value[1].(string)
		v, err := strconv.ParseFloat(text, 64)
		if err != nil {
			return nil, fmt.Errorf("query %s: value %q: %w", query, text, err)
		}
		out = append(out, sample{Metric: r.Metric, Value: v})
	}
	return out, nil
}

// Kiali's versioned-app graph queries, in our own words: the same metric,
// reporter, grouping and "> 0" filter its Istio telemetry vendor sends.
const (
	kialiWindow = "30s"
	// Traffic: requests per second between versioned apps, by outcome.
	kialiTrafficQuery = `sum(rate(istio_requests_total{reporter="source",source_workload_namespace="default"}[` + kialiWindow + `])) by (` +
		`source_cluster,source_workload_namespace,source_workload,source_canonical_service,source_canonical_revision,` +
		`destination_cluster,destination_service_namespace,destination_service,destination_service_name,destination_workload_namespace,` +
		`destination_workload,destination_canonical_service,destination_canonical_revision,request_protocol,response_code,grpc_response_status,response_flags) > 0`
	// Response time: the 95th percentile per edge.
	kialiResponseTimeQuery = `histogram_quantile(0.95, sum(rate(istio_request_duration_milliseconds_bucket{reporter="source",source_workload_namespace="default"}[` + kialiWindow + `])) by (` +
		`le,source_workload_namespace,source_workload,source_canonical_service,source_canonical_revision,` +
		`destination_service_namespace,destination_service_name,destination_workload_namespace,destination_workload,` +
		`destination_canonical_service,destination_canonical_revision)) > 0`
	// Security: what the destination saw, by connection_security_policy.
	kialiSecurityQuery = `sum(rate(istio_requests_total{reporter="destination",source_workload_namespace="default"}[` + kialiWindow + `])) by (` +
		`source_workload_namespace,source_workload,source_canonical_service,source_canonical_revision,source_principal,` +
		`destination_service_namespace,destination_service_name,destination_workload_namespace,destination_workload,` +
		`destination_canonical_service,destination_canonical_revision,destination_principal,connection_security_policy) > 0`
)

// kialiEdge is what the three queries say about checkout -> payments <version>.
type kialiEdge struct {
	rate, errorRate, p95, mtlsRate, otherRate float64
}

func (e kialiEdge) String() string {
	return fmt.Sprintf("%.1f rps, error ratio %.3f, p95 %.2f ms, mutual_tls %.1f rps, other %.1f rps",
		e.rate, e.errorRate/max(e.rate, 1e-9), e.p95, e.mtlsRate, e.otherRate)
}

func isCheckoutToPayments(m map[string]string) bool {
	return m["source_canonical_service"] == "checkout" && m["destination_canonical_service"] == "payments" &&
		m["destination_service_name"] == "payments"
}

func kialiEdges(ctx context.Context, base string) (map[string]*kialiEdge, error) {
	edges := map[string]*kialiEdge{}
	edge := func(m map[string]string) *kialiEdge {
		v := m["destination_canonical_revision"]
		if edges[v] == nil {
			edges[v] = &kialiEdge{}
		}
		return edges[v]
	}
	traffic, err := promQuery(ctx, base, kialiTrafficQuery)
	if err != nil {
		return nil, err
	}
	for _, s := range traffic {
		if !isCheckoutToPayments(s.Metric) || s.Metric["request_protocol"] != "grpc" {
			continue
		}
		e := edge(s.Metric)
		e.rate += s.Value
		if s.Metric["grpc_response_status"] != "0" {
			e.errorRate += s.Value
		}
	}
	latency, err := promQuery(ctx, base, kialiResponseTimeQuery)
	if err != nil {
		return nil, err
	}
	for _, s := range latency {
		if isCheckoutToPayments(s.Metric) {
			edge(s.Metric).p95 = s.Value
		}
	}
	security, err := promQuery(ctx, base, kialiSecurityQuery)
	if err != nil {
		return nil, err
	}
	for _, s := range security {
		if !isCheckoutToPayments(s.Metric) {
			continue
		}
		e := edge(s.Metric)
		if s.Metric["connection_security_policy"] == "mutual_tls" &&
			s.Metric["source_principal"] == "spiffe://cluster.local/ns/default/sa/checkout" &&
			s.Metric["destination_principal"] == "spiffe://cluster.local/ns/default/sa/payments" {
			e.mtlsRate += s.Value
		} else {
			e.otherRate += s.Value
		}
	}
	return edges, nil
}

// TestKialiQueriesOnRealPrometheus scrapes the demo's workloads with the
// real Prometheus and runs Kiali's graph queries against it: the edges
// checkout -> payments v1 and v2 appear with their request rates, their
// error ratio (one call in twenty fails on purpose) and mutual TLS.
func TestKialiQueriesOnRealPrometheus(t *testing.T) {
	requireTool(t, prometheusBinary, "prometheus")
	ctx, cancel := context.WithTimeout(t.Context(), 45*time.Second)
	defer cancel()
	w := startTraffic(t, ctx)
	var targets []string
	for _, u := range w.metricsURLs() {
		parsed, err := url.Parse(u)
		if err != nil {
			t.Fatal(err)
		}
		targets = append(targets, parsed.Host)
	}
	base := startPrometheus(t, ctx, targets)

	// Wait until every query sees both edges. Each payments workload fails
	// exactly one flaky call in flakyEvery and half the calls are flaky, so
	// each edge's error ratio is near 1/(2*flakyEvery) = 5%; the bounds
	// allow for the windows' edges and the Charge/flaky mix per edge.
	good := func(e *kialiEdge) bool {
		if e == nil || e.rate == 0 {
			return false
		}
		ratio := e.errorRate / e.rate
		return ratio > 0.02 && ratio < 0.1 && e.p95 > 0 && e.mtlsRate > 0 && e.otherRate == 0
	}
	var edges map[string]*kialiEdge
	for {
		var err error
		edges, err = kialiEdges(ctx, base)
		if err != nil {
			t.Fatalf("kiali queries: %v", err)
		}
		if edges["v1"] != nil && edges["v2"] != nil && good(edges["v1"]) && good(edges["v2"]) {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("prometheus never showed both edges with errors and mTLS: v1 %v, v2 %v", edges["v1"], edges["v2"])
		case <-time.After(500 * time.Millisecond):
		}
	}
	for _, v := range []string{"v1", "v2"} {
		t.Logf("kiali edge checkout -> payments %s: %v", v, edges[v])
	}
	if len(edges) != 2 {
		t.Errorf("edges from checkout to payments: %v, want v1 and v2 only", edges)
	}
}

// TestGraphPageInHeadlessChromium loads the control plane's /debug/graph in
// the real (headless) Chromium and checks the SVG it drew: both edges, with
// their health colour class and a lock for mutual TLS. The screenshot stays
// in the test's temp dir.
func TestGraphPageInHeadlessChromium(t *testing.T) {
	requireTool(t, chromiumBinary, "chromium")
	ctx, cancel := context.WithTimeout(t.Context(), 45*time.Second)
	defer cancel()
	w := startTraffic(t, ctx)
	base, err := w.cp.ServeAdmin(ctx, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	checkout := admin.NodeID("default", "checkout", "v1")
	versions := map[string]string{
		"v1": admin.NodeID("default", "payments", "v1"),
		"v2": admin.NodeID("default", "payments", "v2"),
	}

	// Until the graph has rates for both edges (two scrapes a rate window
	// apart), the page would show totals only.
	for {
		g, err := fetchGraph(ctx, base+"/debug/graph.json")
		if err != nil {
			t.Fatal(err)
		}
		e1, ok1 := g.Edge(checkout, versions["v1"])
		e2, ok2 := g.Edge(checkout, versions["v2"])
		if ok1 && ok2 && e1.Rate > 0 && e2.Rate > 0 && e1.MutualTLS && e2.MutualTLS {
			t.Logf("graph.json: %+v\n%+v", e1, e2)
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("graph never showed both edges with rates and mTLS: %+v", g)
		case <-time.After(200 * time.Millisecond):
		}
	}

	dir := t.TempDir()
	page := base + "/debug/graph"
	chromium := func(extra ...string) string {
		args := append([]string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
			"--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
			"--user-data-dir=" + filepath.Join(dir, "profile"), "--window-size=1200,800", "--virtual-time-budget=5000"}, extra...)
		cmd := exec.CommandContext(ctx, chromiumBinary, append(args, page)...)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("chromium %v: %v\n%s", extra, err, stderr.String())
		}
		return stdout.String()
	}
	screenshot := filepath.Join(dir, "graph.png")
	chromium("--screenshot=" + screenshot)
	if info, err := os.Stat(screenshot); err != nil || info.Size() == 0 {
		t.Errorf("no screenshot at %s: %v", screenshot, err)
	} else {
		t.Logf("screenshot: %s (%d bytes)", screenshot, info.Size())
	}
	dom := chromium("--dump-dom")
	if !strings.Contains(dom, `data-state="ok"`) {
		t.Fatalf("the page did not load graph.json:\n%s", dom)
	}
	for v, target := range versions {
		id := admin.ElementID(checkout + "->" + target)
		tag := elementTag(dom, `id="edge-`+id+`"`)
		if tag == "" {
			t.Errorf("DOM lacks the edge checkout -> payments %s (id edge-%s):\n%s", v, id, dom)
			continue
		}
		// One call in twenty fails: Kiali's thresholds make that orange.
		if !strings.Contains(tag, "health-degraded") || !strings.Contains(tag, "mtls") {
			t.Errorf("edge checkout -> payments %s = %s, want classes health-degraded and mtls", v, tag)
		}
		if !strings.Contains(dom, `id="lock-`+id+`"`) {
			t.Errorf("edge checkout -> payments %s has no lock icon", v)
		}
		if !strings.Contains(dom, `id="node-`+admin.ElementID(target)+`"`) {
			t.Errorf("DOM lacks the node payments %s", v)
		}
	}
	if !strings.Contains(dom, `id="node-`+admin.ElementID(checkout)+`"`) {
		t.Errorf("DOM lacks the node checkout")
	}
}

// elementTag returns the start tag in html that contains attr, or "".
func elementTag(html, attr string) string {
	i := strings.Index(html, attr)
	if i < 0 {
		return ""
	}
	start := strings.LastIndex(html[:i], "<")
	end := strings.Index(html[i:], ">")
	if start < 0 || end < 0 {
		return ""
	}
	return html[start : i+end+1]
}

func fetchGraph(ctx context.Context, url string) (admin.Graph, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return admin.Graph{}, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return admin.Graph{}, err
	}
	defer resp.Body.Close()
	var g admin.Graph
	if err := json.NewDecoder(resp.Body).Decode(&g); err != nil {
		return admin.Graph{}, fmt.Errorf("decoding %s: %w", url, err)
	}
	return g, nil
}
