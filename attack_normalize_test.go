package mesh_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"mesh"
	"mesh/controlplane"
	"mesh/internal/shop"
	"mesh/internal/testutil"
)

// site is one mesh HTTP workload ("web", app=web) behind the embedded
// control plane, under PERMISSIVE mTLS so that a raw plaintext client can
// put on the wire exactly the bytes an attacker would.
type site struct {
	cp   *controlplane.Server
	addr net.Addr
	m    *mesh.Mesh
}

// peerAuthentication is the namespace-wide PeerAuthentication with mode.
func peerAuthentication(mode string) string {
	return `apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default
  namespace: default
spec:
  mtls:
    mode: ` + mode + "\n"
}

// startSite starts a control plane (cpOpts added) and the web workload
// (meshOpts added) serving h over the mesh's HTTPServer.
func startSite(ctx context.Context, t *testing.T, cpOpts []controlplane.Option, meshOpts []mesh.Option, h http.Handler) *site {
	t.Helper()
	logger := shop.TestLogger(t)
	cp, err := controlplane.New(ctx, append([]controlplane.Option{controlplane.WithLogger(logger)}, cpOpts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cp.Close() })
	if err := cp.Apply([]byte(peerAuthentication("PERMISSIVE"))); err != nil {
		t.Fatal(err)
	}
	wl := controlplane.Workload{Name: "web", Namespace: "default", ServiceAccount: "web", Service: "web", Port: 8080,
		Labels: map[string]string{"app": "web", "version": "v1"}}
	path, err := cp.WriteBootstrap(filepath.Join(t.TempDir(), "web"), wl)
	if err != nil {
		t.Fatal(err)
	}
	m, err := mesh.New(ctx, append([]mesh.Option{mesh.WithBootstrapFile(path), mesh.WithLogger(logger)}, meshOpts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return &site{cp: cp, addr: shop.ServeHTTP(t, m, h), m: m}
}

// rawResponse is what came back for one raw request.
type rawResponse struct {
	status int
	seen   string // the request target the handler saw ("" when it never ran)
	body   string
}

// dial opens a TCP connection to addr, with ctx's deadline as a hang guard.
func dial(ctx context.Context, t *testing.T, addr net.Addr) net.Conn {
	t.Helper()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl) // hang guard only
	}
	return conn
}

// rawHTTP sends one HTTP/1.1 request with exactly this method and target
// on a new plaintext connection.
func rawHTTP(ctx context.Context, t *testing.T, addr net.Addr, method, target, extra string) rawResponse {
	t.Helper()
	conn := dial(ctx, t, addr)
	defer conn.Close()
	fmt.Fprintf(conn, "%s %s HTTP/1.1\r\nHost: web.default.svc.cluster.local\r\nConnection: close\r\n%s\r\n", method, target, extra)
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("%s %s: %v", method, target, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return rawResponse{status: resp.StatusCode, seen: resp.Header.Get("X-Seen"), body: string(body)}
}

// areas is a stock http.ServeMux with an admin area, an internal one, a
// public one and a catch-all; each answers with its pattern and the path
// it got. X-Seen tells the test what request target reached the handler.
func areas() http.Handler {
	mux := http.NewServeMux()
	for _, pattern := range []string{"/admin", "/admin/", "/internal/", "/public/", "/"} {
		mux.HandleFunc(pattern, func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprintf(w, "area %s path %s", pattern, r.URL.Path)
		})
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Seen", r.RequestURI)
		mux.ServeHTTP(w, r)
	})
}

// webPolicy is AuthorizationPolicy "web-paths" for app=web with action
// and the YAML of its rules.
func webPolicy(action, rules string) string {
	return `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: web-paths
  namespace: default
spec:
  selector:
    matchLabels:
      app: web
  action: ` + action + `
  rules:
` + rules
}

var (
	denyPathsYAML = webPolicy("DENY", `  - to:
    - operation:
        paths: ["/admin", "/admin/*", "/internal/*"]
  - to:
    - operation:
        methods: ["DELETE"]
`)
	allowPathsYAML = webPolicy("ALLOW", `  - to:
    - operation:
        paths: ["/public/*"]
`)
)

// pathCase is one attack request and, per normalization (BASE,
// MERGE_SLASHES, DECODE_AND_MERGE_SLASHES), what Envoy under Istio does
// with it: "403" or "400", or "=T" when the request reaches the handler
// as target T.
type pathCase struct {
	method, target string
	want           [3]string
}

func same(w string) [3]string { return [3]string{w, w, w} }

// The cases follow istio.io's "Authorization Policy Normalization" page
// (percent-encoded unreserved characters, backslashes, multiple slashes,
// dot segments, queries, %00) and CVE-2021-31920 (escaped slashes and
// multiple slashes past path rules), against a DENY policy on /admin,
// /admin/* and /internal/* (and DELETE anywhere).
var denyCases = []pathCase{
	{"GET", "/admin", same("403")},
	{"GET", "/admin/users", same("403")},
	{"GET", "/%61dmin", same("403")},
	{"GET", "/ad%6Din", same("403")},
	{"GET", "/%61%64%6d%69%6e/users", same("403")},
	{"GET", "/internal/%73ecret", same("403")},
	{"GET", "/public/../admin", same("403")},
	{"GET", "/public/%2e%2e/admin", same("403")},
	{"GET", "/public/%2E%2E/admin", same("403")},
	{"GET", "/public/.%2e/admin", same("403")},
	{"GET", "/./admin", same("403")},
	{"GET", "/%2e/admin", same("403")},
	{"GET", "/admin/.", same("403")},
	{"GET", "/public/x/../../internal/secret", same("403")},
	{"GET", "/public\\..\\admin", same("403")},
	{"GET", "/admin\\users", same("403")},
	{"GET", "/admin?x=1", same("403")},
	{"GET", "/admin%00", same("400")},
	{"GET", "/public/%00/../../admin", same("400")},
	{"delete", "/public/x", same("400")},
	{"DELETE", "/public/x", same("403")},
	{"GET", "/internal//secret", same("403")},
	// Envoy's BASE keeps these; MERGE_SLASHES or DECODE_AND_MERGE_SLASHES
	// close them (CVE-2021-31920).
	{"GET", "//admin", [3]string{"=//admin", "403", "403"}},
	{"GET", "//internal/secret", [3]string{"=//internal/secret", "403", "403"}},
	{"GET", "/%2Fadmin", [3]string{"=/%2Fadmin", "=/%2Fadmin", "403"}},
	{"GET", "/admin%2Fusers", [3]string{"=/admin%2Fusers", "=/admin%2Fusers", "403"}},
	{"GET", "/admin%2fusers", [3]string{"=/admin%2fusers", "=/admin%2fusers", "403"}},
	{"GET", "/admin%5Cusers", [3]string{"=/admin%5Cusers", "=/admin%5Cusers", "403"}},
	{"GET", "/%5Cadmin", [3]string{"=/%5Cadmin", "=/%5Cadmin", "403"}},
	// Not the admin area: case matters, a double encoding is decoded once.
	{"GET", "/ADMIN", same("=/ADMIN")},
	{"GET", "/%2561dmin", same("=/%2561dmin")},
	{"GET", "/public/%61bc", same("=/public/abc")},
}

// Against an ALLOW policy on /public/* only.
var allowCases = []pathCase{
	{"GET", "/public/x", same("=/public/x")},
	{"GET", "/%70ublic/x", same("=/public/x")},
	{"GET", "/public/x?q=/../admin", same("=/public/x?q=/../admin")},
	{"GET", "/public//../admin", same("=/public/admin")},
	{"GET", "/public/../admin", same("403")},
	{"GET", "/public/%2e%2e/admin", same("403")},
	{"GET", "/public/%2E./admin", same("403")},
	{"GET", "/public/.%2E/admin", same("403")},
	{"GET", "/public\\..\\admin", same("403")},
	{"GET", "/public/..\\admin", same("403")},
	{"GET", "/public/./../admin", same("403")},
	{"GET", "/admin?/public/", same("403")},
	{"GET", "/admin#/public/", same("403")},
	{"GET", "/public/x%00", same("400")},
	{"get", "/public/x", same("400")},
	{"GET", "/public/..%2Fadmin", [3]string{"=/public/..%2Fadmin", "=/public/..%2Fadmin", "403"}},
	{"GET", "/public/..%5Cadmin", [3]string{"=/public/..%5Cadmin", "=/public/..%5Cadmin", "403"}},
	{"GET", "/public/%2E%2E%2Fadmin", [3]string{"=/public/..%2Fadmin", "=/public/..%2Fadmin", "403"}},
}

// TestAttackPathNormalization sends the normalization attack table through
// a real mesh HTTP server to a stock http.ServeMux, under DENY and then
// ALLOW path policies, for each of Istio's normalizations: BASE by
// default, MERGE_SLASHES through the mesh option (as under istiod), and
// DECODE_AND_MERGE_SLASHES through the embedded control plane's listener.
func TestAttackPathNormalization(t *testing.T) {
	modes := []struct {
		name     string
		cpOpts   []controlplane.Option
		meshOpts []mesh.Option
	}{
		{name: "BASE"},
		{name: "MERGE_SLASHES", meshOpts: []mesh.Option{mesh.WithPathNormalization(mesh.PathNormalizationMergeSlashes)}},
		{name: "DECODE_AND_MERGE_SLASHES", cpOpts: []controlplane.Option{controlplane.WithPathNormalization(controlplane.PathNormalizationDecodeAndMergeSlashes)}},
	}
	for i, mode := range modes {
		t.Run(mode.name, func(t *testing.T) {
			ctx := testutil.Context(t)
			s := startSite(ctx, t, mode.cpOpts, mode.meshOpts, areas())
			for _, phase := range []struct {
				yaml   string
				canary string // a target the policy refuses, to know it is in force
				cases  []pathCase
			}{{denyPathsYAML, "/admin", denyCases}, {allowPathsYAML, "/other", allowCases}} {
				if err := s.cp.Apply([]byte(phase.yaml)); err != nil {
					t.Fatal(err)
				}
				waitStatus(ctx, t, s.addr, phase.canary, http.StatusForbidden)
				for _, tc := range phase.cases {
					got := rawHTTP(ctx, t, s.addr, tc.method, tc.target, "")
					want := tc.want[i]
					var ok bool
					if seen, forwarded := strings.CutPrefix(want, "="); forwarded {
						ok = got.seen == seen
					} else {
						ok = strconv.Itoa(got.status) == want && got.seen == ""
					}
					if !ok {
						t.Errorf("%s %s: got status %d, handler saw %q (%s); want %s (as Envoy with Istio's %s)",
							tc.method, tc.target, got.status, got.seen, got.body, want, mode.name)
					}
				}
			}
		})
	}
}

// waitStatus requests target until it gets want (policies reach the
// server a moment after Apply).
func waitStatus(ctx context.Context, t *testing.T, addr net.Addr, target string, want int) {
	t.Helper()
	for {
		got := rawHTTP(ctx, t, addr, "GET", target, "")
		if got.status == want {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("GET %s never answered %d; last %d", target, want, got.status)
		case <-time.After(10 * time.Millisecond):
		}
	}
}
