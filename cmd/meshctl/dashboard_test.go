package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"mesh/controlplane"
	pages "mesh/internal/admin"
	"mesh/internal/shop"
)

// TestDashboardInHeadlessChromium: meshctl dashboard prints the control
// plane's graph page; real Chromium loads it while checkout calls payments
// v1 and v2 at 90/10, and the page's first view shows both edges with
// their weight, a nonzero rps, error % and p99, and the mTLS lock. The
// screenshot stays in the test's temp dir, its path logged.
func TestDashboardInHeadlessChromium(t *testing.T) {
	shop.RequireTool(t, shop.ChromiumBinary, "chromium")
	ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
	defer cancel()
	tm := newTestMesh(t, ctx, 0, "-admin", "127.0.0.1:0")
	must(t, "canary", "set", "payments", "v1=90", "v2=10", "-state", tm.state)
	if err := shop.WaitFor(ctx, tm.conn, 1, func(r shop.Reply) bool { return r.Version == "v2" }); err != nil {
		t.Fatal(err)
	}
	load := shop.StartLoad(ctx, t, 2, func(ctx context.Context) error { _, err := shop.Charge(ctx, tm.conn); return err })
	load.WaitCalls(ctx, t, 20)

	page := strings.TrimSpace(must(t, "dashboard", "-state", tm.state, "-open=false"))
	golden(t, "dashboard", mask(page+"\n"))
	dir := t.TempDir()
	// The first load of the page: no graph.json was asked for before.
	dom := shop.Chromium(t, ctx, dir, page, "--dump-dom")
	screenshot := filepath.Join(dir, "dashboard.png")
	shop.Chromium(t, ctx, dir, page, "--screenshot="+screenshot)
	load.Check(t, "calls during the dashboard", 20)
	if info, err := os.Stat(screenshot); err != nil || info.Size() == 0 {
		t.Errorf("no screenshot at %s: %v", screenshot, err)
	} else {
		t.Logf("screenshot: %s (%d bytes)", screenshot, info.Size())
		// CI keeps it: MESHCTL_ARTIFACTS names a directory that outlives
		// the test's.
		if dst := os.Getenv("MESHCTL_ARTIFACTS"); dst != "" {
			if png, err := os.ReadFile(screenshot); err == nil && os.MkdirAll(dst, 0o755) == nil &&
				os.WriteFile(filepath.Join(dst, "dashboard.png"), png, 0o644) == nil {
				t.Logf("screenshot kept: %s", filepath.Join(dst, "dashboard.png"))
			}
		}
	}
	if !strings.Contains(dom, `data-state="ok"`) {
		t.Fatalf("the page did not load graph.json:\n%s", dom)
	}
	checkout := pages.NodeID("default", "checkout", "v1")
	text := regexp.MustCompile(`<text[^>]*class="traffic"[^>]*>weight (\d+)% · ([0-9.e+-]+) rps</text><text[^>]*class="quality"[^>]*>(\d+\.\d)% err · p99 (≤\d+(\.\d+)?ms|slow)</text>`)
	for version, weight := range map[string]string{"v1": "90", "v2": "10"} {
		id := pages.ElementID(checkout + "->" + pages.NodeID("default", "payments", version))
		start := strings.Index(dom, `id="edge-`+id+`"`)
		if start < 0 {
			t.Errorf("DOM lacks the edge checkout -> payments %s:\n%s", version, dom)
			continue
		}
		edge := dom[start:]
		edge = edge[:strings.Index(edge, "</g></g>")+len("</g>")]
		if tag := shop.ElementTag(dom, `id="edge-`+id+`"`); !strings.Contains(tag, "mtls") || !strings.Contains(tag, `data-weight="`+weight+`"`) {
			t.Errorf("edge to payments %s = %s, want class mtls and weight %s", version, tag, weight)
		}
		m := text.FindStringSubmatch(edge)
		if m == nil {
			t.Errorf("edge to payments %s shows no weight, rps, error %% and p99:\n%s", version, edge)
			continue
		}
		// The first view shows calls flowing: not "0 rps", nor "0.0 rps".
		if rps, err := strconv.ParseFloat(m[2], 64); m[1] != weight || err != nil || rps <= 0 || m[3] != "0.0" {
			t.Errorf("edge to payments %s shows weight %s%%, %s rps, %s%% errors; want weight %s, calls flowing, none failed", version, m[1], m[2], m[3], weight)
		}
		if !strings.Contains(edge, `id="lock-`+id+`"`) {
			t.Errorf("edge to payments %s has no lock", version)
		}
	}
}

// TestAdminPagesLinkNoDeadPage crawls every link of the control plane's
// admin pages (from the URL meshctl dashboard prints) and of checkout's
// (where proxy-config and tap read): each page answers 2xx.
func TestAdminPagesLinkNoDeadPage(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
	defer cancel()
	tm := newTestMesh(t, ctx, 0, "-admin", "127.0.0.1:0")
	page := strings.TrimSpace(must(t, "dashboard", "-state", tm.state, "-open=false"))
	var st controlplane.DaemonStatus
	if err := json.Unmarshal([]byte(must(t, "status", "-state", tm.state, "-o", "json")), &st); err != nil {
		t.Fatal(err)
	}
	bases := map[string]string{"control plane": strings.TrimSuffix(page, "/debug/graph")}
	for _, w := range st.Workloads {
		if w.Workload.Name == "checkout" {
			bases["checkout"] = strings.TrimSuffix(w.MetricsURL, "/metrics")
		}
	}
	want := map[string][]string{
		"control plane": {"/", "/debug/graph", "/debug/graph.json", "/healthz"},
		"checkout":      {"/", "/metrics", "/debug/config", "/debug/clusters", "/debug/tap", "/debug/graph", "/debug/graph.json", "/healthz"},
	}
	for name, base := range bases {
		visited := shop.CheckLinks(t, ctx, name, base)
		for _, p := range want[name] {
			if !slices.Contains(visited, p) {
				t.Errorf("%s: crawled %v, which lacks %s", name, visited, p)
			}
		}
	}
	if len(bases) != 2 {
		t.Errorf("crawled %v, want the control plane's and checkout's pages", bases)
	}
}
