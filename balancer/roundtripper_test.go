package balancer

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"mesh/internal/handshake"
	"mesh/internal/testutil"
	"mesh/xdsclient"
)

// httpBackend is a real HTTP server on 127.0.0.1:0 that names itself in
// the "backend" response header and the protocol it served in "proto".
type httpBackend struct {
	name string
	addr string
	srv  *httptest.Server
	// hits counts requests per path.
	mu   sync.Mutex
	hits map[string]int
}

type httpBackendMode int

const (
	http1Plain httpBackendMode = iota
	h2cPlain
	tlsALPN // HTTP/2 or HTTP/1.1 by ALPN
)

func startHTTPBackend(t *testing.T, name string, mode httpBackendMode, handler http.HandlerFunc) *httpBackend {
	t.Helper()
	b := &httpBackend{name: name, hits: map[string]int{}}
	b.srv = httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b.mu.Lock()
		b.hits[r.URL.Path]++
		b.mu.Unlock()
		w.Header().Set("backend", name)
		w.Header().Set("proto", r.Proto)
		w.Header().Set("host", r.Host)
		if handler != nil {
			handler(w, r)
		}
	}))
	switch mode {
	case h2cPlain:
		b.srv.Config.Protocols = new(http.Protocols)
		b.srv.Config.Protocols.SetHTTP1(true)
		b.srv.Config.Protocols.SetUnencryptedHTTP2(true)
		b.srv.Start()
	case tlsALPN:
		b.srv.EnableHTTP2 = true
		b.srv.StartTLS()
	default:
		b.srv.Start()
	}
	b.addr = b.srv.Listener.Addr().String()
	t.Cleanup(b.srv.Close)
	return b
}

func (b *httpBackend) hitsOf(path string) int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.hits[path]
}

// testDialer is the DialTLSFunc of the tests: plaintext for clusters without
// TLS, real TLS (ALPN h2, http/1.1) trusting roots for the others. It
// records the clusters it dialled for.
type testDialer struct {
	roots *x509.CertPool
	mu    sync.Mutex
	seen  []handshake.Info
}

func (d *testDialer) dial(ctx context.Context, network, addr, cluster string, upstream *xdsclient.UpstreamTLS) (net.Conn, error) {
	info := &handshake.Info{Cluster: cluster, TLS: upstream}
	d.mu.Lock()
	d.seen = append(d.seen, *info)
	d.mu.Unlock()
	var nd net.Dialer
	conn, err := nd.DialContext(ctx, network, addr)
	if err != nil || info.TLS == nil {
		return conn, err
	}
	tc := tls.Client(conn, &tls.Config{RootCAs: d.roots, ServerName: "example.com", NextProtos: []string{"h2", "http/1.1"}})
	if err := tc.HandshakeContext(ctx); err != nil {
		_ = conn.Close()
		return nil, err
	}
	return tc, nil
}

// httpEnv is a RoundTripper fed by a fakeXDS.
type httpEnv struct {
	xds    *fakeXDS
	rt     *RoundTripper
	dialer *testDialer
	client *http.Client
}

func newHTTPEnv(t *testing.T, opts ...RoundTripperOption) *httpEnv {
	t.Helper()
	checkNoLeaks(t)
	xds := newFakeXDS()
	t.Cleanup(xds.Close)
	e := &httpEnv{xds: xds, dialer: &testDialer{roots: x509.NewCertPool()}}
	e.rt = NewRoundTripper(xds, e.dialer.dial, opts...)
	t.Cleanup(func() { _ = e.rt.Close() })
	e.client = &http.Client{Transport: e.rt}
	return e
}

func (e *httpEnv) serve(cluster string, tlsSettings *xdsclient.UpstreamTLS, backends ...*httpBackend) {
	c := testCluster(cluster)
	c.TLS = tlsSettings
	e.xds.clusters.set(cluster, c)
	var addrs []string
	for _, b := range backends {
		addrs = append(addrs, b.addr)
		if b.srv.TLS != nil {
			e.dialer.roots.AddCert(b.srv.Certificate())
		}
	}
	e.xds.endpoints.set(cluster+"-eds", testEndpoints(cluster+"-eds", addrs...))
}

func (e *httpEnv) route(rc *xdsclient.RouteConfig) {
	e.xds.listeners.set(testTarget, testListener(testTarget, rc.Name))
	e.xds.routes.set(rc.Name, rc)
}

// get sends GET path and returns the serving backend's name; it fails on
// errors and on non-200 responses.
func (e *httpEnv) get(ctx context.Context, path string) (string, *http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+testTarget+path, nil)
	if err != nil {
		return "", nil, err
	}
	resp, err := e.client.Do(req)
	if err != nil {
		return "", nil, err
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", resp, fmt.Errorf("status %d from %s", resp.StatusCode, resp.Header.Get("backend"))
	}
	return resp.Header.Get("backend"), resp, nil
}

var plainTLS = &xdsclient.UpstreamTLS{Roots: xdsclient.CertificateRef{Provider: "default", Certificate: "ROOTCA"}}

func TestRoundTripperHTTP2OverTLSAndH2C(t *testing.T) {
	ctx := testutil.Context(t)
	e := newHTTPEnv(t, WithPlaintextHTTP2())
	secure := startHTTPBackend(t, "secure", tlsALPN, nil)
	h2c := startHTTPBackend(t, "h2c", h2cPlain, nil)
	e.serve("secure", plainTLS, secure)
	e.serve("h2c", nil, h2c)
	e.route(&xdsclient.RouteConfig{Name: "rc", VirtualHosts: []xdsclient.VirtualHost{{
		Name: "vh", Domains: []string{"*"},
		Routes: []xdsclient.Route{
			{Match: xdsclient.RouteMatch{Prefix: "/secure"}, Action: xdsclient.RouteAction{Cluster: "secure"}},
			{Match: xdsclient.RouteMatch{Prefix: "/"}, Action: xdsclient.RouteAction{Cluster: "h2c"}},
		},
	}}})
	for _, tc := range []struct{ path, backend string }{{"/secure/x", "secure"}, {"/plain", "h2c"}} {
		got, resp, err := e.get(ctx, tc.path)
		if err != nil {
			t.Fatalf("GET %s: %v", tc.path, err)
		}
		if got != tc.backend || resp.ProtoMajor != 2 || resp.Header.Get("proto") != "HTTP/2.0" {
			t.Errorf("GET %s: served by %q over %s (server saw %s), want %q over HTTP/2", tc.path, got, resp.Proto, resp.Header.Get("proto"), tc.backend)
		}
	}
	e.dialer.mu.Lock()
	defer e.dialer.mu.Unlock()
	var sawTLS bool
	for _, info := range e.dialer.seen {
		if info.Cluster == "secure" && info.TLS == plainTLS {
			sawTLS = true
		}
		if info.Cluster == "h2c" && info.TLS != nil {
			t.Errorf("plaintext cluster dialled with TLS settings %+v", info.TLS)
		}
	}
	if !sawTLS {
		t.Errorf("dials %+v: none for cluster secure with its TLS settings", e.dialer.seen)
	}
}

func TestRoundTripperMatchesHeadersAndQuery(t *testing.T) {
	ctx := testutil.Context(t)
	e := newHTTPEnv(t)
	a := startHTTPBackend(t, "a", http1Plain, nil)
	b := startHTTPBackend(t, "b", http1Plain, nil)
	e.serve("cluster-a", nil, a)
	e.serve("cluster-b", nil, b)
	e.route(&xdsclient.RouteConfig{Name: "rc", VirtualHosts: []xdsclient.VirtualHost{{
		Name: "vh", Domains: []string{"*"},
		Routes: []xdsclient.Route{
			{Name: "query", Match: xdsclient.RouteMatch{Prefix: "/api", QueryParameters: []xdsclient.QueryParameterMatcher{
				{Name: "version", Match: &xdsclient.StringMatcher{Kind: xdsclient.MatchExact, Value: "2"}}}},
				Action: xdsclient.RouteAction{Cluster: "cluster-b"}},
			{Name: "header", Match: xdsclient.RouteMatch{Prefix: "/api", Headers: []xdsclient.HeaderMatcher{
				{Name: "x-canary", Match: &xdsclient.StringMatcher{Kind: xdsclient.MatchExact, Value: "yes"}}}},
				Action: xdsclient.RouteAction{Cluster: "cluster-b"}},
			{Name: "api", Match: xdsclient.RouteMatch{Prefix: "/api"}, Action: xdsclient.RouteAction{Cluster: "cluster-a"}},
		},
	}}})
	for _, tc := range []struct {
		path, header, want string
	}{
		{"/api/x", "", "a"},
		{"/api/x?version=2", "", "b"},
		{"/api/x?version=1", "", "a"},
		{"/api/x", "yes", "b"},
	} {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+testTarget+tc.path, nil)
		if tc.header != "" {
			req.Header.Set("X-Canary", tc.header)
		}
		resp, err := e.client.Do(req)
		if err != nil {
			t.Fatalf("GET %s: %v", tc.path, err)
		}
		_ = resp.Body.Close()
		if got := resp.Header.Get("backend"); got != tc.want {
			t.Errorf("GET %s (x-canary %q): served by %q, want %q", tc.path, tc.header, got, tc.want)
		}
	}

	_, _, err := e.get(ctx, "/other")
	var unavailable *UnavailableError
	if !errors.As(err, &unavailable) || unavailable.StatusCode() != http.StatusServiceUnavailable || !errors.Is(err, ErrNoRoute) || !strings.Contains(err.Error(), `route config "rc"`) {
		t.Fatalf("GET /other: %v, want a 503-like UnavailableError wrapping ErrNoRoute and naming the route config", err)
	}
	// Only http:// is accepted: the mesh does the TLS.
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+testTarget+"/api", nil)
	if _, err := e.rt.RoundTrip(req); err == nil || !strings.Contains(err.Error(), "unsupported scheme") {
		t.Fatalf("https request: %v, want an unsupported scheme error", err)
	}
}

func httpRetryPolicy(retries uint32) *xdsclient.RetryPolicy {
	return &xdsclient.RetryPolicy{NumRetries: retries, BackoffBase: time.Millisecond, BackoffMax: 2 * time.Millisecond}
}

func TestRoundTripperRetries(t *testing.T) {
	ctx := testutil.Context(t)
	e := newHTTPEnv(t)
	var failNext atomic.Int64
	var bodies []string
	var mu sync.Mutex
	a := startHTTPBackend(t, "a", http1Plain, func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		bodies = append(bodies, string(body))
		mu.Unlock()
		if failNext.Add(-1) >= 0 {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	})
	// A closed port next to the backend: round robin sends some attempts
	// there, and connect-failure retries them on the backend.
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := closed.Addr().String()
	_ = closed.Close()
	e.xds.clusters.set("cluster-a", testCluster("cluster-a"))
	e.xds.endpoints.set("cluster-a-eds", testEndpoints("cluster-a-eds", a.addr, deadAddr))
	policy := httpRetryPolicy(2)
	policy.HTTPGatewayError, policy.HTTPConnectFailure = true, true
	e.serve("cluster-b", nil, a)
	e.route(&xdsclient.RouteConfig{Name: "rc", VirtualHosts: []xdsclient.VirtualHost{{
		Name: "vh", Domains: []string{"*"},
		Routes: []xdsclient.Route{
			{Match: xdsclient.RouteMatch{Prefix: "/ok"}, Action: xdsclient.RouteAction{Cluster: "cluster-a", RetryPolicy: policy}},
			{Match: xdsclient.RouteMatch{Prefix: "/"}, Action: xdsclient.RouteAction{Cluster: "cluster-b", RetryPolicy: policy}},
		},
	}}})

	// Every request succeeds although half the first attempts hit the dead
	// endpoint.
	for i := range 10 {
		if _, _, err := e.get(ctx, "/ok"); err != nil {
			t.Fatalf("request %d: %v", i, err)
		}
	}

	// A 503 is retried, and a POST body is replayed.
	post := func(body io.Reader) (*http.Response, error) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+testTarget+"/post", body)
		resp, err := e.client.Do(req)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			_ = resp.Body.Close()
		}
		return resp, err
	}
	mu.Lock()
	bodies = nil
	mu.Unlock()
	failNext.Store(1)
	resp, err := post(bytes.NewReader([]byte("payload")))
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("POST whose first attempt gets 503: %v %v, want 200", resp, err)
	}
	mu.Lock()
	if len(bodies) != 2 || bodies[0] != "payload" || bodies[1] != "payload" {
		t.Errorf("backend saw bodies %q, want the payload twice", bodies)
	}
	mu.Unlock()

	// num_retries bounds attempts.
	before := a.hitsOf("/post")
	failNext.Store(10)
	if resp, err := post(nil); err != nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("POST failing every attempt: %v %v, want the last 503", resp, err)
	}
	if n := a.hitsOf("/post") - before; n != 3 {
		t.Errorf("backend saw %d attempts, want 3 (num_retries 2)", n)
	}

	// A body that cannot be replayed is not retried.
	before = a.hitsOf("/post")
	failNext.Store(1)
	if resp, err := post(io.MultiReader(strings.NewReader("once"))); err != nil || resp.StatusCode != http.StatusServiceUnavailable {
		t.Fatalf("POST with a one-shot body: %v %v, want the 503 unretried", resp, err)
	}
	if n := a.hitsOf("/post") - before; n != 1 {
		t.Errorf("backend saw %d attempts of a one-shot body, want 1", n)
	}
	failNext.Store(0)
}

func TestRoundTripperNoRoutesYet(t *testing.T) {
	ctx := testutil.Context(t)
	e := newHTTPEnv(t, WithPublishTimeout(time.Millisecond))
	_, _, err := e.get(ctx, "/")
	var unavailable *UnavailableError
	if !errors.As(err, &unavailable) || !strings.Contains(err.Error(), testTarget) {
		t.Fatalf("request before any resource: %v, want UnavailableError naming the authority", err)
	}
	e.xds.listeners.remove(testTarget)
	// The error names what was looked up and how the control plane names it.
	testutil.WaitFor(ctx, t, "the listener's absence to be reported", func() bool {
		_, _, err := e.get(ctx, "/")
		return errors.Is(err, ErrResourceNotFound) && strings.Contains(err.Error(), `listener "`+testTarget+`"`) &&
			strings.Contains(err.Error(), `"host:port"`)
	})
	if err := e.rt.Close(); err != nil {
		t.Fatal(err)
	}
	if _, _, err := e.get(ctx, "/"); !errors.Is(err, ErrClosed) {
		t.Fatalf("request after Close: %v, want ErrClosed", err)
	}
}

// TestRoundTripperWaitsForItsCluster: a request to a cluster with no
// endpoint yet waits for one, as gRPC's wait-for-ready does, and gives up
// only when its context ends, naming the cluster.
func TestRoundTripperWaitsForItsCluster(t *testing.T) {
	ctx := testutil.Context(t)
	e := newHTTPEnv(t)
	a := startHTTPBackend(t, "a", http1Plain, nil)
	e.xds.clusters.set("cluster-a", testCluster("cluster-a"))
	e.xds.endpoints.set("cluster-a-eds", testEndpoints("cluster-a-eds"))
	e.route(weightedRouteConfig("rc", w("cluster-a", 1)))

	short, cancel := context.WithCancel(ctx)
	errs := make(chan error, 1)
	go func() {
		_, _, err := e.get(short, "/early")
		errs <- err
	}()
	testutil.WaitFor(ctx, t, "the request to wait for the cluster", func() bool { return e.rt.waiting.Load() == 1 })
	cancel()
	err := <-errs
	var unavailable *UnavailableError
	if !errors.As(err, &unavailable) || !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), `cluster "cluster-a"`) {
		t.Fatalf("request cancelled while waiting: %v, want an UnavailableError naming the cluster and the cancellation", err)
	}

	type result struct {
		backend string
		err     error
	}
	done := make(chan result, 1)
	go func() {
		backend, _, err := e.get(ctx, "/held")
		done <- result{backend, err}
	}()
	testutil.WaitFor(ctx, t, "the request to wait for the cluster", func() bool { return e.rt.waiting.Load() == 1 })
	e.xds.endpoints.set("cluster-a-eds", testEndpoints("cluster-a-eds", a.addr))
	if r := <-done; r.err != nil || r.backend != "a" {
		t.Fatalf("held request: %q, %v; want served by a once the endpoint arrived", r.backend, r.err)
	}
	if n := e.rt.waiting.Load(); n != 0 {
		t.Errorf("%d requests still counted as waiting", n)
	}
}
