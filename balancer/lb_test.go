package balancer

import (
	"context"
	"errors"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"mesh/internal/testutil"
	"mesh/xdsclient"
)

// warmUp makes calls until every backend in want has served one, so that
// measurements start with every weighted cluster READY.
func warmUp(ctx context.Context, t *testing.T, call func(context.Context) (string, error), want ...string) {
	t.Helper()
	seen := map[string]bool{}
	for missing := len(want); missing > 0; {
		got, err := call(ctx)
		if err != nil {
			t.Fatalf("warm-up call: %v", err)
		}
		for _, name := range want {
			if got == name && !seen[name] {
				seen[name] = true
				missing--
			}
		}
	}
}

// callMany makes n calls over workers concurrent goroutines and counts them
// per backend; it fails the test on any error.
func callMany(ctx context.Context, t *testing.T, call func(context.Context) (string, error), n, workers int) map[string]int {
	t.Helper()
	var (
		mu     sync.Mutex
		counts = map[string]int{}
		next   atomic.Int64
		wg     sync.WaitGroup
		failed atomic.Value
	)
	for range workers {
		wg.Go(func() {
			for next.Add(1) <= int64(n) {
				got, err := call(ctx)
				if err != nil {
					failed.CompareAndSwap(nil, err)
					return
				}
				mu.Lock()
				counts[got]++
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if err, _ := failed.Load().(error); err != nil {
		t.Fatalf("RPC failed: %v", err)
	}
	return counts
}

// load runs RPCs on workers goroutines until stop is closed or max RPCs
// were sent, recording every failure.
type load struct {
	sent, failures atomic.Int64
	firstErr       atomic.Value
	mu             sync.Mutex
	last           map[string]int64 // backend -> value of sent when it last served
	wg             sync.WaitGroup
	stop           chan struct{}
}

func startLoad(ctx context.Context, call func(context.Context) (string, error), workers int, max int64) *load {
	l := &load{stop: make(chan struct{}), last: map[string]int64{}}
	for range workers {
		l.wg.Go(func() {
			for {
				select {
				case <-l.stop:
					return
				default:
				}
				n := l.sent.Add(1)
				if n > max {
					return
				}
				got, err := call(ctx)
				if err != nil {
					l.failures.Add(1)
					l.firstErr.CompareAndSwap(nil, err)
					continue
				}
				l.mu.Lock()
				l.last[got] = n
				l.mu.Unlock()
			}
		})
	}
	return l
}

func (l *load) finish(t *testing.T) {
	t.Helper()
	close(l.stop)
	l.wg.Wait()
	if n := l.failures.Load(); n > 0 {
		err, _ := l.firstErr.Load().(error)
		t.Fatalf("%d of %d RPCs failed under load; first: %v", n, l.sent.Load(), err)
	}
}

// waitOnly waits until the last window RPCs all went to backend only.
func (l *load) waitOnly(ctx context.Context, t *testing.T, only string, window int64) {
	t.Helper()
	start := l.sent.Load()
	testutil.WaitFor(ctx, t, "traffic only to "+only, func() bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		now := l.sent.Load()
		if now-start < window {
			return false
		}
		for name, at := range l.last {
			if name != only && at > now-window {
				return false
			}
		}
		return l.last[only] > now-window
	})
}

// waitBoth waits until both backends served since now.
func (l *load) waitBoth(ctx context.Context, t *testing.T, x, y string) {
	t.Helper()
	start := l.sent.Load()
	testutil.WaitFor(ctx, t, "traffic to "+x+" and "+y, func() bool {
		l.mu.Lock()
		defer l.mu.Unlock()
		return l.last[x] > start && l.last[y] > start
	})
}

// TestFlipsUnderLoadNeverFail: under load, no call fails while the
// weights flip between two connected clusters, 90/10 to 0/100 and back
// with the traffic followed each time, then 200 times 100/0 to 0/100 as
// fast as calls get through; over gRPC the flips reconnect nothing. Over
// HTTP, a new cluster whose endpoint is not usable yet leaves the old
// table serving until it is.
func TestFlipsUnderLoadNeverFail(t *testing.T) {
	forEachFrontEnd(t, func(t *testing.T, fe testFrontEnd) {
		ctx := testutil.Context(t)
		a, b := fe.backend(t, "a", nil), fe.backend(t, "b", nil)
		fe.serve(testCluster("cluster-a"), a)
		fe.serve(testCluster("cluster-b"), b)
		split := func(wa, wb uint32) {
			fe.routeAction(xdsclient.RouteAction{WeightedClusters: []xdsclient.ClusterWeight{w("cluster-a", wa), w("cluster-b", wb)}})
		}
		split(90, 10)
		warmUp(ctx, t, fe.call, "a", "b")

		l := startLoad(ctx, fe.call, 8, 400000)
		for range 20 {
			split(0, 100)
			l.waitOnly(ctx, t, "b", 50)
			split(90, 10)
			l.waitBoth(ctx, t, "a", "b")
		}
		fastStart := l.sent.Load()
		for i := range 200 {
			if i%2 == 0 {
				split(0, 100)
			} else {
				split(100, 0)
			}
			// Let some calls through each table.
			start := l.sent.Load()
			testutil.WaitFor(ctx, t, "calls between flips", func() bool { return l.sent.Load() > start+8 })
		}
		l.mu.Lock()
		for _, name := range []string{"a", "b"} {
			if l.last[name] <= fastStart {
				t.Errorf("backend %s served nothing across the fast flips", name)
			}
		}
		l.mu.Unlock()
		if g, ok := fe.(*grpcFrontEnd); ok {
			if ca, cb := g.backends[a].conns.Load(), g.backends[b].conns.Load(); ca != 1 || cb != 1 {
				t.Errorf("flips between connected clusters reconnected: a has %d connections, b %d; want 1 each", ca, cb)
			}
		}

		if _, ok := fe.(*httpFrontEnd); ok {
			// A new cluster whose endpoints are not usable yet: the old
			// table keeps serving until they are. (Only the RoundTripper's
			// publisher waits for endpoints, waitForEndpoints: the gRPC
			// one publishes such a table and fails fail-fast calls with
			// "no usable endpoints".)
			c := fe.backend(t, "c", nil)
			fe.xds().clusters.set("cluster-c", testCluster("cluster-c"))
			unusable := testEndpoints("cluster-c-eds", c)
			unusable.Localities[0].Endpoints[0].Health = xdsclient.HealthUnhealthy
			fe.xds().endpoints.set("cluster-c-eds", unusable)
			fe.routeAction(xdsclient.RouteAction{Cluster: "cluster-c"})
			start := l.sent.Load()
			testutil.WaitFor(ctx, t, "calls while cluster-c has no usable endpoint", func() bool { return l.sent.Load() > start+50 })
			fe.serve(testCluster("cluster-c"), c)
			l.waitOnly(ctx, t, "c", 50)
		}
		l.finish(t)
		t.Logf("%d calls across the config changes", l.sent.Load())
	}, WithDrainGrace(10*time.Millisecond))
}

func TestNewClusterAndRemovedClusterUnderLoad(t *testing.T) {
	ctx := testutil.Context(t)
	e := newTestEnv(t, WithDrainGrace(10*time.Millisecond))
	a, b, c := startBackend(t, "a"), startBackend(t, "b"), startBackend(t, "c")
	e.serve("cluster-a", a)
	e.serve("cluster-b", b)
	e.route(w("cluster-a", 50), w("cluster-b", 50))
	warmUp(ctx, t, e.call, "a", "b")

	l := startLoad(ctx, e.call, 8, 200000)
	// A brand-new cluster takes all traffic; the old table serves until
	// its connection is READY.
	e.serve("cluster-c", c)
	e.route(w("cluster-b", 50), w("cluster-c", 50))
	l.waitBoth(ctx, t, "b", "c")
	// cluster-a is gone: its connection drains and closes.
	testutil.WaitFor(ctx, t, "cluster-a's connection to drain", func() bool { return a.conns.Load() == 0 })
	// Replace cluster-b by a new cluster on the same backend address.
	e.serve("cluster-b2", b)
	e.route(w("cluster-b2", 50), w("cluster-c", 50))
	l.waitBoth(ctx, t, "b", "c")
	l.finish(t)
	testutil.WaitFor(ctx, t, "cluster-b's old connection to drain", func() bool { return b.conns.Load() == 1 })
	if got := e.xds.activeWatches(); got != 1+1+2*2 { // LDS, RDS, CDS+EDS for b2 and c
		t.Errorf("active watches = %d, want 6 (unused clusters' watches cancelled)", got)
	}
}

func TestRouteByPathPrefix(t *testing.T) {
	ctx := testutil.Context(t)
	e := newTestEnv(t)
	a, b := startBackend(t, "a"), startBackend(t, "b")
	e.serve("cluster-a", a)
	e.serve("cluster-b", b)
	e.xds.listeners.set(testTarget, testListener(testTarget, "rc"))
	e.xds.routes.set("rc", &xdsclient.RouteConfig{Name: "rc", VirtualHosts: []xdsclient.VirtualHost{{
		Name:    "vh",
		Domains: []string{"*"},
		Routes: []xdsclient.Route{
			{Match: xdsclient.RouteMatch{Prefix: "/grpc.testing.TestService/Empty", CaseSensitive: true}, Action: xdsclient.RouteAction{Cluster: "cluster-a"}},
			{Match: xdsclient.RouteMatch{Path: "/grpc.testing.testservice/unarycall"}, Action: xdsclient.RouteAction{Cluster: "cluster-b"}},
		},
	}}})
	for range 5 {
		got, err := e.call(ctx)
		if err != nil || got != "a" {
			t.Fatalf("EmptyCall went to %q (err %v), want a", got, err)
		}
		resp, err := callUnary(ctx, e)
		if err != nil || resp != "b" {
			t.Fatalf("UnaryCall went to %q (err %v), want b", resp, err)
		}
	}
	_, err := e.client.CacheableUnaryCall(ctx, &testpb.SimpleRequest{})
	want := `no route matched /grpc.testing.TestService/CacheableUnaryCall in route config "rc"`
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), want) {
		t.Fatalf("unrouted call: err = %v, want UNAVAILABLE containing %q", err, want)
	}
}

func callUnary(ctx context.Context, e *testEnv) (string, error) {
	var hdr metadata.MD
	if _, err := e.client.UnaryCall(ctx, &testpb.SimpleRequest{}, grpc.Header(&hdr)); err != nil {
		return "", err
	}
	return strings.Join(hdr.Get("backend"), ","), nil
}

func TestListenerAndRouteNotFound(t *testing.T) {
	ctx := testutil.Context(t)
	e := newTestEnv(t)
	a := startBackend(t, "a")

	e.xds.listeners.remove(testTarget)
	_, err := e.call(ctx)
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), `listener "svc.test:80"`) {
		t.Fatalf("with no listener: err = %v, want UNAVAILABLE naming the listener", err)
	}

	e.serve("cluster-a", a)
	e.route(w("cluster-a", 1))
	testutil.WaitFor(ctx, t, "RPCs to succeed once the listener exists", func() bool {
		got, err := e.call(ctx)
		return err == nil && got == "a"
	})

	// A NACK keeps the last good version.
	e.xds.routes.fail("rc", errors.New("route config rc: virtual_hosts[0]: bad regex"))
	e.xds.clusters.fail("cluster-a", errors.New("nack"))
	for range 10 {
		if got, err := e.call(ctx); err != nil || got != "a" {
			t.Fatalf("after a NACK: got %q, %v; want the last good config to keep serving", got, err)
		}
	}

	e.xds.routes.remove("rc")
	testutil.WaitFor(ctx, t, "RPCs to fail naming the route config", func() bool {
		_, err := e.call(ctx)
		return status.Code(err) == codes.Unavailable && strings.Contains(err.Error(), `route config "rc"`)
	})
}

func TestClusterNotFoundFailsOnlyItsRPCs(t *testing.T) {
	ctx := testutil.Context(t)
	e := newTestEnv(t)
	a := startBackend(t, "a")
	e.serve("cluster-a", a)
	e.xds.clusters.remove("cluster-missing")
	e.route(w("cluster-a", 1))
	warmUp(ctx, t, e.call, "a")
	e.route(w("cluster-missing", 1))
	testutil.WaitFor(ctx, t, "RPCs to fail naming the missing cluster", func() bool {
		_, err := e.call(ctx)
		return status.Code(err) == codes.Unavailable && strings.Contains(err.Error(), `cluster "cluster-missing"`)
	})
}

func TestNoReadyEndpointNamesClusterAndError(t *testing.T) {
	ctx := testutil.Context(t)
	e := newTestEnv(t)
	dead := startBackend(t, "dead")
	dead.srv.Stop() // its port now refuses connections
	e.serve("cluster-dead", dead)
	e.route(w("cluster-dead", 1))
	testutil.WaitFor(ctx, t, "RPCs to fail naming the cluster", func() bool {
		_, err := e.call(ctx)
		return status.Code(err) == codes.Unavailable && strings.Contains(err.Error(), `cluster "cluster-dead" has no ready endpoint; last connection error:`) &&
			strings.Contains(err.Error(), "refused")
	})
}

func TestTLSChangeReplacesSubConns(t *testing.T) {
	ctx := testutil.Context(t)
	e := newTestEnv(t, WithDrainGrace(10*time.Millisecond))
	a := startBackend(t, "a")
	e.serve("cluster-a", a)
	e.route(w("cluster-a", 1))
	warmUp(ctx, t, e.call, "a")

	// An equal cluster with fresh pointers keeps the connection.
	e.serve("cluster-a", a)
	tls := &xdsclient.UpstreamTLS{Roots: xdsclient.CertificateRef{Provider: "default", Certificate: "ROOTCA"}, SNI: "a.test"}
	withTLS := testCluster("cluster-a")
	withTLS.TLS = tls
	l := startLoad(ctx, e.call, 4, 100000)
	e.xds.clusters.set("cluster-a", withTLS)
	testutil.WaitFor(ctx, t, "a handshake with the new TLS settings", func() bool {
		for _, h := range e.creds.handshakes() {
			if h.Cluster == "cluster-a" && h.TLS == tls {
				return true
			}
		}
		return false
	})
	testutil.WaitFor(ctx, t, "the plaintext connection to drain", func() bool { return a.conns.Load() == 1 })
	l.finish(t)
	hs := e.creds.handshakes()
	if len(hs) != 2 || hs[0].TLS != nil || hs[0].Cluster != "cluster-a" {
		t.Errorf("handshakes = %+v, want one plaintext then one with TLS", hs)
	}
}

func TestCloseCancelsWatches(t *testing.T) {
	ctx := testutil.Context(t)
	e := newTestEnv(t)
	a := startBackend(t, "a")
	e.serve("cluster-a", a)
	e.route(w("cluster-a", 1))
	warmUp(ctx, t, e.call, "a")
	if got := e.xds.activeWatches(); got != 4 {
		t.Fatalf("active watches = %d, want 4 (LDS, RDS, CDS, EDS)", got)
	}
	if err := e.conn.Close(); err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(ctx, t, "watches to be cancelled", func() bool { return e.xds.activeWatches() == 0 })
}

func TestInlineRouteConfigAndListenerTemplate(t *testing.T) {
	ctx := testutil.Context(t)
	e := newTestEnv(t, WithListenerNameTemplate("xdstp://mesh/envoy.config.listener.v3.Listener/%s"))
	a := startBackend(t, "a")
	e.serve("cluster-a", a)
	name := "xdstp://mesh/envoy.config.listener.v3.Listener/" + testTarget
	e.xds.listeners.set(name, &xdsclient.Listener{Name: name, HTTP: &xdsclient.HTTPConnectionManager{
		RouteConfig: weightedRouteConfig("inline", w("cluster-a", 1)),
	}})
	if got, err := e.call(ctx); err != nil || got != "a" {
		t.Fatalf("call = %q, %v; want a", got, err)
	}
}

func TestNewTableWaitsUntilNewClusterIsReady(t *testing.T) {
	ctx := testutil.Context(t)
	e := newTestEnv(t)
	a := startBackend(t, "a")
	slow, gate := startGatedBackend(t, "slow")
	e.serve("cluster-a", a)
	e.route(w("cluster-a", 1))
	warmUp(ctx, t, e.call, "a")

	e.serve("cluster-slow", slow)
	e.route(w("cluster-slow", 1))
	testutil.WaitFor(ctx, t, "a connection attempt to the new cluster", func() bool {
		return len(e.creds.handshakes()) == 2
	})
	// While cluster-slow connects, the old table keeps serving: RPCs
	// neither fail nor wait.
	for range 50 {
		rpcCtx, cancel := context.WithTimeout(ctx, 5*time.Second)
		got, err := e.call(rpcCtx)
		cancel()
		if err != nil || got != "a" {
			t.Fatalf("while the new cluster connects: got %q, %v; want a", got, err)
		}
	}
	gate.release()
	testutil.WaitFor(ctx, t, "traffic to switch to the new cluster", func() bool {
		got, err := e.call(ctx)
		return err == nil && got == "slow"
	})
}

func TestPublishTimeoutBoundsTheWait(t *testing.T) {
	ctx := testutil.Context(t)
	e := newTestEnv(t, WithPublishTimeout(20*time.Millisecond))
	a := startBackend(t, "a")
	hung, _ := startGatedBackend(t, "hung")
	e.serve("cluster-a", a)
	e.route(w("cluster-a", 1))
	warmUp(ctx, t, e.call, "a")

	e.serve("cluster-hung", hung)
	e.route(w("cluster-hung", 1))
	// After the timeout the new table is published even though its
	// cluster never got ready: RPCs then wait for it.
	testutil.WaitFor(ctx, t, "the new table to be published", func() bool {
		rpcCtx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
		defer cancel()
		_, err := e.call(rpcCtx)
		return status.Code(err) == codes.DeadlineExceeded
	})
}

func TestEndpointChangeUnderLoad(t *testing.T) {
	ctx := testutil.Context(t)
	e := newTestEnv(t, WithDrainGrace(10*time.Millisecond))
	old1, old2, new1 := startBackend(t, "old1"), startBackend(t, "old2"), startBackend(t, "new1")
	e.serve("cluster-a", old1, old2)
	e.route(w("cluster-a", 1))
	warmUp(ctx, t, e.call, "old1", "old2") // round robin reaches both

	l := startLoad(ctx, e.call, 8, 200000)
	// Replace every endpoint of the cluster at once; unhealthy and
	// draining endpoints never get traffic.
	eps := testEndpoints("cluster-a-eds", new1.addr)
	eps.Localities[0].Endpoints = append(eps.Localities[0].Endpoints,
		xdsclient.Endpoint{Address: old1.addr, Health: xdsclient.HealthDraining},
		xdsclient.Endpoint{Address: old2.addr, Health: xdsclient.HealthUnhealthy})
	e.xds.endpoints.set("cluster-a-eds", eps)
	l.waitOnly(ctx, t, "new1", 100)
	l.finish(t)
	testutil.WaitFor(ctx, t, "the removed endpoints' connections to drain", func() bool {
		return old1.conns.Load() == 0 && old2.conns.Load() == 0
	})
}

func TestLogicalDNSCluster(t *testing.T) {
	ctx := testutil.Context(t)
	e := newTestEnv(t)
	a := startBackend(t, "a")
	e.xds.clusters.set("dns", &xdsclient.Cluster{Name: "dns", Type: xdsclient.ClusterLogicalDNS, DNSAddress: a.addr})
	e.route(w("dns", 1))
	if got, err := e.call(ctx); err != nil || got != "a" {
		t.Fatalf("call = %q, %v; want a", got, err)
	}
	if got := e.xds.activeWatches(); got != 3 {
		t.Errorf("active watches = %d, want 3 (a LOGICAL_DNS cluster has no EDS watch)", got)
	}
}

func TestUsableAddresses(t *testing.T) {
	eps := &xdsclient.Endpoints{Name: "e", Localities: []xdsclient.LocalityEndpoints{
		{Priority: 1, Endpoints: []xdsclient.Endpoint{{Address: "10.0.1.1:80"}}},
		{Priority: 0, Endpoints: []xdsclient.Endpoint{
			{Address: "10.0.0.2:80", Health: xdsclient.HealthHealthy},
			{Address: "10.0.0.1:80", Health: xdsclient.HealthUnknown},
			{Address: "10.0.0.1:80", Health: xdsclient.HealthHealthy},
			{Address: "10.0.0.3:80", Health: xdsclient.HealthUnhealthy},
			{Address: "10.0.0.4:80", Health: xdsclient.HealthDegraded},
		}},
	}}
	if got, want := strings.Join(usableAddresses(eps), " "), "10.0.0.1:80 10.0.0.2:80"; got != want {
		t.Errorf("usableAddresses = %s, want %s", got, want)
	}
	eps.Localities[1].Endpoints = eps.Localities[1].Endpoints[3:]
	if got, want := strings.Join(usableAddresses(eps), " "), "10.0.1.1:80"; got != want {
		t.Errorf("with priority 0 all unusable: usableAddresses = %s, want %s", got, want)
	}
}

func TestErrorBeforeFirstSnapshotFailsRPCs(t *testing.T) {
	ctx := testutil.Context(t)
	e := newTestEnv(t)
	e.conn.Connect() // builds the resolver, which watches the listener
	testutil.WaitFor(ctx, t, "the listener watch", func() bool { return e.xds.activeWatches() == 1 })
	e.xds.listeners.fail(testTarget, errors.New("listener svc.test:80: filter_chains[0]: unsupported filter"))
	_, err := e.call(ctx)
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "unsupported filter") {
		t.Fatalf("err = %v, want UNAVAILABLE with the NACK reason", err)
	}
}

func TestEqualTLS(t *testing.T) {
	mk := func(san string) *xdsclient.UpstreamTLS {
		return &xdsclient.UpstreamTLS{
			Identity:        &xdsclient.CertificateRef{Provider: "default", Certificate: "default"},
			Roots:           xdsclient.CertificateRef{Provider: "default", Certificate: "ROOTCA"},
			SubjectAltNames: []xdsclient.StringMatcher{{Kind: xdsclient.MatchRegex, Regex: regexp.MustCompile(san)}},
		}
	}
	if !equalTLS(mk("^spiffe://td/ns/a/sa/.*$"), mk("^spiffe://td/ns/a/sa/.*$")) {
		t.Error("equal settings compare unequal")
	}
	if equalTLS(mk("^spiffe://td/ns/a/sa/.*$"), mk("^spiffe://td/ns/b/sa/.*$")) {
		t.Error("different SAN regexes compare equal")
	}
	noID := mk("x")
	noID.Identity = nil
	if equalTLS(mk("x"), noID) || equalTLS(nil, noID) || !equalTLS(nil, nil) {
		t.Error("identity or nil handling is wrong")
	}
}

// Endpoints that vanish for a moment from a serving cluster (a server's
// xDS stream reconnecting, say) do not fail calls: the old endpoints keep
// serving until the endpoints return or the publish timeout passes.
func TestVanishingEndpointsDoNotFailCalls(t *testing.T) {
	ctx := testutil.Context(t)
	e := newTestEnv(t, WithPublishTimeout(time.Minute))
	a := startBackend(t, "a")
	e.serve("cluster-a", a)
	e.route(w("cluster-a", 1))
	warmUp(ctx, t, e.call, "a")

	l := startLoad(ctx, e.call, 4, 200000)
	e.xds.endpoints.set("cluster-a-eds", testEndpoints("cluster-a-eds")) // none
	l.waitOnly(ctx, t, "a", 200)
	e.xds.endpoints.set("cluster-a-eds", testEndpoints("cluster-a-eds", a.addr))
	l.waitOnly(ctx, t, "a", 200)
	l.finish(t)
}
