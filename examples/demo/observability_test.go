package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
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
	chromiumBinary   = shop.ChromiumBinary
)

// requireTool: see shop.RequireTool.
func requireTool(t *testing.T, path, debianPackage string) { shop.RequireTool(t, path, debianPackage) }

// startTraffic starts the demo's mesh with 50/50 splits and steady
// traffic from checkout to payments (gRPC) and web (net/http), one call in
// 2*flakyEvery failing on each, until the test ends.
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
	for _, version := range []string{"v1", "v2"} {
		for {
			got, err := shop.GetVersion(ctx, w.web, shop.WebURL)
			if err == nil && got == version {
				break
			}
			if ctx.Err() != nil {
				t.Fatalf("web %s never answered: %v", version, err)
			}
		}
	}
	stop := sendTraffic(w, 4, 2*time.Millisecond)
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

// scrapeTarget is one workload's /metrics, with the target labels Istio's
// Prometheus addon gives a pod: its Kubernetes labels (app, version,
// security.istio.io/tlsMode, service.istio.io/canonical-*, sanitized as
// its labelmap does), namespace and pod.
type scrapeTarget struct {
	addr   string
	labels map[string]string
}

// startPrometheus runs the real Prometheus, scraping targets every second
// the way the addon's kubernetes-pods job does (honor_labels: what the
// workload exports wins), and returns its base URL once it is ready.
func startPrometheus(t *testing.T, ctx context.Context, targets []scrapeTarget) string {
	t.Helper()
	dir := t.TempDir()
	var static strings.Builder
	for _, target := range targets {
		fmt.Fprintf(&static, "  - targets: [%s]\n    labels:\n", strconv.Quote(target.addr))
		for _, k := range slices.Sorted(maps.Keys(target.labels)) {
			fmt.Fprintf(&static, "      %s: %s\n", k, strconv.Quote(target.labels[k]))
		}
	}
	config := fmt.Sprintf(`global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
- job_name: kubernetes-pods
  honor_labels: true
  static_configs:
%s`, static.String())
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

// TestGraphPageInHeadlessChromium loads the control plane's /debug/graph in
// the real (headless) Chromium and checks the SVG it drew: both edges, with
// their health colour class and a lock for mutual TLS. The screenshot stays
// in the test's temp dir.
func TestGraphPageInHeadlessChromium(t *testing.T) {
	requireTool(t, chromiumBinary, "chromium")
	// A hang guard (shop.Chromium starts a hung Chromium run again); the
	// steps log when they finish, so a slow run shows where its time went.
	ctx, cancel := context.WithTimeout(t.Context(), 8*time.Minute)
	defer cancel()
	start := time.Now()
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
			t.Logf("after %v, graph.json: %+v\n%+v", time.Since(start).Round(time.Millisecond), e1, e2)
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
	chromium := func(extra ...string) string { return shop.Chromium(t, ctx, dir, page, extra...) }
	screenshot := filepath.Join(dir, "graph.png")
	chromium("--screenshot=" + screenshot)
	t.Logf("screenshot taken after %v", time.Since(start).Round(time.Millisecond))
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
		tag := shop.ElementTag(dom, `id="edge-`+id+`"`)
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

// TestAdminPagesLinkNoDeadPage crawls each workload's admin pages and the
// control plane's from their index: every page linked answers 200.
func TestAdminPagesLinkNoDeadPage(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute) // hang guard
	defer cancel()
	w := startTraffic(t, ctx)
	cpAdmin, err := w.cp.ServeAdmin(ctx, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	bases := map[string]string{"control plane": cpAdmin}
	maps.Copy(bases, w.admin)
	for name, base := range bases {
		visited := shop.CheckLinks(t, ctx, name, base)
		if name != "control plane" && len(visited) < 6 {
			t.Errorf("%s: crawled only %v; want /metrics, /debug/config, /debug/clusters, /debug/graph(.json), /healthz", name, visited)
		}
	}
}

// TestCallersOwnGraphShowsTheLock: checkout's own admin graph, built from
// its own metrics alone (the caller's, whose connection_security_policy is
// "unknown" as Istio's source reporter says), shows every edge it calls
// with the mTLS lock.
func TestCallersOwnGraphShowsTheLock(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute) // hang guard
	defer cancel()
	w := startTraffic(t, ctx)
	checkout := admin.NodeID("default", "checkout", "v1")
	for {
		g, err := fetchGraph(ctx, w.admin["checkout"]+"/debug/graph.json")
		if err != nil {
			t.Fatal(err)
		}
		locked := 0
		for _, svc := range []string{"payments", "web"} {
			for _, v := range []string{"v1", "v2"} {
				if e, ok := g.Edge(checkout, admin.NodeID("default", svc, v)); ok && e.MutualTLS && e.MTLSRatio == 1 {
					locked++
				}
			}
		}
		if locked == 4 {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("checkout's own graph never showed its four edges with the lock: %+v", g)
		case <-time.After(200 * time.Millisecond):
		}
	}
}
