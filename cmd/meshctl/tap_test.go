package main

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"mesh"
	"mesh/admin"
	"mesh/examples/shop"
	"mesh/internal/admin/tapview"
)

// startWeb enrolls web-v1 with meshctl bootstrap and serves shop.Web over
// the mesh's HTTP server; the config dir routes web to v1.
func startWeb(t *testing.T, ctx context.Context, tm *testMesh) {
	t.Helper()
	writeConfig(t, tm.cfg, "web.yaml", shop.WebYAML(100, 0))
	dir := filepath.Join(t.TempDir(), "web-v1")
	adminAddr := freeAddr(t)
	must(t, "bootstrap", "-state", tm.state, "-name", "web-v1", "-sa", "web", "-service", "web", "-port", "8080",
		"-labels", "app=web,version=v1", "-metrics", "http://"+adminAddr+"/metrics", "-dir", dir)
	m, err := mesh.New(ctx, mesh.WithBootstrapFile(filepath.Join(dir, "bootstrap.json")))
	if err != nil {
		t.Fatal(err)
	}
	// Its admin pages, without metrics: /debug/tap is what the test reads.
	adminPages, err := admin.Serve(m, adminAddr, nil)
	if err != nil {
		t.Fatal(err)
	}
	srv := m.NewHTTPServer(shop.Web("v1"))
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() { defer close(served); _ = srv.Serve(lis) }()
	t.Cleanup(func() { _ = srv.Close(); <-served; _ = adminPages.Close(); m.Close() })
}

// secret is what the test's calls carry as credentials; no tap output
// may show it.
const secret = "s3cr3t-tap-token"

// webCall is one call from checkout to web over the mesh, with a bearer
// token, a cookie and a token in the query.
func webCall(ctx context.Context, m *mesh.Mesh) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, shop.WebURL+"?access_token="+secret, nil)
	if err != nil {
		return err
	}
	req.Header.Set("Authorization", "Bearer "+secret)
	req.Header.Set("Cookie", "session="+secret)
	resp, err := m.HTTPClient().Do(req)
	if err != nil {
		return err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return nil
}

// tapWhile runs meshctl tap with args while call makes calls, until tap
// exits.
func tapWhile(t *testing.T, ctx context.Context, call func(), args ...string) result {
	t.Helper()
	done := make(chan result, 1)
	go func() { done <- meshctl(t, append([]string{"tap"}, args...)...) }()
	for {
		select {
		case r := <-done:
			return r
		default:
			if ctx.Err() != nil {
				return <-done
			}
			call()
		}
	}
}

// TestTap: meshctl tap streams checkout's requests, gRPC and HTTP, with
// method, path, status, duration and the peer's verified identity, bounded
// by -n or -duration, as text, JSON or YAML, and never a credential.
func TestTap(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
	defer cancel()
	tm := newTestMesh(t, ctx, 0)
	startWeb(t, ctx, tm)
	for {
		if err := webCall(ctx, tm.checkout); err == nil {
			break
		} else if ctx.Err() != nil {
			t.Fatalf("web never answered: %v", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	both := func() {
		_, _ = shop.Charge(ctx, tm.conn)
		_ = webCall(ctx, tm.checkout)
	}
	var outputs []string
	r := tapWhile(t, ctx, both, "checkout", "-state", tm.state, "-n", "6", "-o", "json")
	outputs = append(outputs, r.stdout, r.stderr)
	if r.code != 0 {
		t.Fatalf("tap -o json: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) != 6 {
		t.Fatalf("tap -n 6 printed %d records:\n%s", len(lines), r.stdout)
	}
	var grpcSeen, httpSeen bool
	for _, l := range lines {
		var rec tapview.Record
		if err := json.Unmarshal([]byte(l), &rec); err != nil {
			t.Fatalf("record %q: %v", l, err)
		}
		if rec.Direction != "outbound" || rec.DurationMillis <= 0 || rec.Time.IsZero() {
			t.Errorf("record %+v: want an outbound call with a duration and a time", rec)
		}
		switch rec.Protocol {
		case "grpc":
			grpcSeen = true
			if rec.Method != "POST" || rec.Path != shop.ChargeMethod || rec.Status != "OK" || rec.Peer != "spiffe://cluster.local/ns/default/sa/payments" {
				t.Errorf("gRPC record %+v: want POST %s, OK, from payments' identity", rec, shop.ChargeMethod)
			}
		case "http":
			httpSeen = true
			if rec.Method != "GET" || rec.Path != "/version" || rec.Status != "200" || rec.Peer != "spiffe://cluster.local/ns/default/sa/web" {
				t.Errorf("HTTP record %+v: want GET /version, 200, from web's identity", rec)
			}
		}
	}
	if !grpcSeen || !httpSeen {
		t.Errorf("tap of alternating calls showed gRPC %v, HTTP %v; want both:\n%s", grpcSeen, httpSeen, r.stdout)
	}

	// Text, for people: gRPC calls only, so the golden is stable.
	charge := func() { _, _ = shop.Charge(ctx, tm.conn) }
	r = tapWhile(t, ctx, charge, "checkout", "-state", tm.state, "-n", "2")
	outputs = append(outputs, r.stdout, r.stderr)
	if r.code != 0 {
		t.Fatalf("tap: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	masked := regexp.MustCompile(`\d\d:\d\d:\d\d\.\d{3}`).ReplaceAllString(r.stdout, "<TIME>")
	masked = regexp.MustCompile(`\d+\.\dms`).ReplaceAllString(masked, "<DURATION>")
	golden(t, "tap", regexp.MustCompile(` {2,}`).ReplaceAllString(masked, "  "))

	r = tapWhile(t, ctx, both, "checkout", "-state", tm.state, "-n", "4", "-o", "yaml")
	outputs = append(outputs, r.stdout, r.stderr)
	if r.code != 0 || strings.Count(r.stdout, "---\n") != 4 || !strings.Contains(r.stdout, "peer: spiffe://cluster.local/ns/default/sa/") {
		t.Errorf("tap -o yaml: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}

	// The server's side: web's inbound requests, with the caller's
	// verified identity.
	web := func() { _ = webCall(ctx, tm.checkout) }
	r = tapWhile(t, ctx, web, "web-v1", "-state", tm.state, "-n", "2", "-o", "json")
	outputs = append(outputs, r.stdout, r.stderr)
	for _, l := range strings.Split(strings.TrimSpace(r.stdout), "\n") {
		var rec tapview.Record
		if err := json.Unmarshal([]byte(l), &rec); err != nil || rec.Direction != "inbound" || rec.Protocol != "http" ||
			rec.Path != "/version" || rec.Status != "200" || rec.Peer != "spiffe://cluster.local/ns/default/sa/checkout" {
			t.Errorf("web's record %q (%v): want an inbound GET /version, 200, from checkout's identity", l, err)
		}
	}

	// -duration ends a quiet tap: what came, and a note of why it stopped.
	r = meshctl(t, "tap", "checkout", "-state", tm.state, "-n", "5", "-duration", "1s")
	if r.code != 0 || strings.Count(r.stdout, "\n") != 1 || !strings.Contains(r.stderr, "stopped at -duration") {
		t.Errorf("a quiet tap with -duration 1s: exit %d, stdout %q, stderr %q; want the header only and a note", r.code, r.stdout, r.stderr)
	}

	for i, o := range outputs {
		if strings.Contains(o, secret) {
			t.Errorf("tap output %d shows a credential:\n%s", i, o)
		}
	}
	oneLine(t, meshctl(t, "tap", "nobody", "-state", tm.state), 1, "workload default/nobody: not enrolled")
	oneLine(t, meshctl(t, "tap", "payments-v1", "-state", tm.state, "-duration", "1s"), 1, "not the mesh's admin pages")
	oneLine(t, meshctl(t, "tap", "checkout", "-state", tm.state, "-n", "0"), 2, "-n 0")
}
