package mesh_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"mesh"
	"mesh/admin"
	"mesh/controlplane"
	"mesh/internal/shop"
	"mesh/internal/testutil"
)

// startWeb serves an HTTP workload "web" in w's mesh; its handler answers
// with the caller's identity as the mesh proved it.
func startWeb(ctx context.Context, t *testing.T, w *shop.World) net.Addr {
	t.Helper()
	web := controlplane.Workload{Name: "web", Namespace: "default", ServiceAccount: "web", Service: "web", Port: 8080,
		Labels: map[string]string{"app": "web", "version": "v1"}}
	path, err := w.ControlPlane.WriteBootstrap(filepath.Join(t.TempDir(), "web"), web)
	if err != nil {
		t.Fatal(err)
	}
	m, err := mesh.New(ctx, mesh.WithBootstrapFile(path), mesh.WithLogger(shop.TestLogger(t)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hs := m.NewHTTPServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		id, _ := mesh.PeerID(r.Context())
		fmt.Fprintf(rw, "%s caller=%s tls=%t", r.Proto, id, r.TLS != nil)
	}))
	testutil.ServeHTTP(t, hs, lis)
	return lis.Addr()
}

const webURL = "http://web.default.svc.cluster.local:8080/hello"

// get fetches url until it answers with want status (the route and the
// endpoint reach the client a moment after the server starts serving).
func get(ctx context.Context, t *testing.T, client *http.Client, url string, want int) string {
	t.Helper()
	var last string
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := client.Do(req)
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == want {
				return string(body)
			}
			last = fmt.Sprintf("status %d: %s", resp.StatusCode, body)
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			t.Fatalf("GET %s never answered %d; last: %s", url, want, last)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func TestHTTPClientAndServerOverMTLS(t *testing.T) {
	ctx := testutil.Context(t)
	w := shop.StartWorld(t, ctx, shop.WorldConfig{V1: 100, V2: 0})
	addr := startWeb(ctx, t, w)

	body := get(ctx, t, w.Checkout.HTTPClient(), webURL, http.StatusOK)
	t.Logf("web answered: %s", body)
	if !strings.Contains(body, "caller=spiffe://cluster.local/ns/default/sa/checkout tls=true") {
		t.Fatalf("web saw %q, want the checkout SVID over TLS", body)
	}
	// STRICT: a client without the mesh's mTLS is refused.
	plain := &http.Client{Timeout: 10 * time.Second}
	if resp, err := plain.Get("http://" + addr.String() + "/hello"); err == nil {
		resp.Body.Close()
		t.Fatalf("plaintext request to a STRICT server got %s", resp.Status)
	}
}

func TestAuthorizationPolicyDeniesHTTPAndGRPC(t *testing.T) {
	ctx := testutil.Context(t)
	w := shop.StartWorld(t, ctx, shop.WorldConfig{V1: 100, V2: 0})
	startWeb(ctx, t, w)
	client := w.Checkout.HTTPClient()
	get(ctx, t, client, webURL, http.StatusOK)
	if _, err := shop.Charge(ctx, w.Conn); err != nil {
		t.Fatal(err)
	}

	// Only payments may call web; checkout may not call payments at all.
	err := w.ControlPlane.Apply([]byte(`apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: web-from-payments
  namespace: default
spec:
  selector:
    matchLabels:
      app: web
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/default/sa/payments"]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: payments-not-from-checkout
  namespace: default
spec:
  selector:
    matchLabels:
      app: payments
  action: DENY
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/default/sa/checkout"]
`))
	if err != nil {
		t.Fatal(err)
	}
	// The existing connections learn the new policy too.
	get(ctx, t, client, webURL, http.StatusForbidden)
	for {
		_, err := shop.Charge(ctx, w.Conn)
		if status.Code(err) == codes.PermissionDenied {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("payments never denied checkout; last: %v", err)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// TestHTTPClientWaitsForReadinessAndNamesUnknownTargets: the first request
// to a service that has only just started waits for its endpoint (as a
// gRPC call waits for readiness) instead of failing; a URL the control
// plane has no listener for fails with what was looked up and how to name
// it.
func TestHTTPClientWaitsForReadinessAndNamesUnknownTargets(t *testing.T) {
	ctx := testutil.Context(t)
	w := shop.StartWorld(t, ctx, shop.WorldConfig{V1: 100, V2: 0})
	client := w.Checkout.HTTPClient()
	// Web is declared (its bootstrap written) before it serves: its
	// cluster exists with no endpoint yet. One request, no retry loop: it
	// must wait for web's endpoint.
	web := controlplane.Workload{Name: "web", Namespace: "default", ServiceAccount: "web", Service: "web", Port: 8080}
	if _, err := w.ControlPlane.BootstrapJSON(web, t.TempDir()); err != nil {
		t.Fatal(err)
	}
	type result struct {
		resp *http.Response
		err  error
	}
	first := make(chan result, 1)
	go func() {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, webURL, nil)
		resp, err := client.Do(req)
		first <- result{resp, err}
	}()
	// Until web's cluster is in checkout's table, with no endpoint.
	pages := admin.Handler(w.Checkout, nil)
	for clusterShown := false; !clusterShown; {
		rec := httptest.NewRecorder()
		pages.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/debug/clusters", nil))
		var page struct {
			Clusters []struct {
				Name      string
				Endpoints []any
			}
		}
		if err := json.Unmarshal(rec.Body.Bytes(), &page); err != nil {
			t.Fatalf("/debug/clusters: %v", err)
		}
		for _, c := range page.Clusters {
			clusterShown = clusterShown || (strings.Contains(c.Name, "web.default") && len(c.Endpoints) == 0)
		}
		select {
		case r := <-first:
			t.Fatalf("the first request ended before web served: %v", r.err)
		case <-ctx.Done():
			t.Fatal("web's cluster never reached checkout")
		case <-time.After(10 * time.Millisecond):
		}
	}
	startWeb(ctx, t, w)
	r := <-first
	if r.err != nil {
		t.Fatalf("first request to a service that had not started: %v", r.err)
	}
	r.resp.Body.Close()
	if r.resp.StatusCode != http.StatusOK {
		t.Fatalf("first request: %s", r.resp.Status)
	}

	// No port: the control plane names the listener host:port.
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://web.default.svc.cluster.local/hello", nil)
	_, err := client.Do(req)
	if err == nil || !strings.Contains(err.Error(), `listener "web.default.svc.cluster.local:80"`) || !strings.Contains(err.Error(), `"host:port"`) {
		t.Fatalf("GET without the service's port: %v; want an error naming the listener looked up and the host:port form", err)
	}
}
