package xdsclient_test

import (
	"context"
	"errors"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/grpc/codes"

	"mesh/internal/testutil"
	"mesh/xdsclient"
	"mesh/xdsclient/xdstest"
)

const (
	nodeID       = "sidecar~10.0.0.1~app.default~default.svc.cluster.local"
	listenerName = "payments.default.svc.cluster.local:8080"
	routeName    = "payments-route"
	clusterV1    = "outbound|8080|v1|payments.default.svc.cluster.local"
	clusterV2    = "outbound|8080|v2|payments.default.svc.cluster.local"

	typeRDS = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
	typeLDS = "type.googleapis.com/envoy.config.listener.v3.Listener"
)

func fastBackoff(int) time.Duration { return 5 * time.Millisecond }

func newClient(t *testing.T, srv *xdstest.Server, opts ...xdsclient.Option) *xdsclient.Client {
	t.Helper()
	opts = append([]xdsclient.Option{xdsclient.WithBackoff(fastBackoff)}, opts...)
	c, err := xdsclient.New(srv.Bootstrap(nodeID), opts...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// events collects a watcher's events in an unbounded queue, so a slow
// test never blocks the client's callback goroutine.
type events[T any] struct {
	mu    sync.Mutex
	queue []xdsclient.Event[T]
	ready chan struct{}
}

func newEvents[T any]() *events[T] { return &events[T]{ready: make(chan struct{}, 1)} }

func (e *events[T]) fn(ev xdsclient.Event[T]) {
	e.mu.Lock()
	e.queue = append(e.queue, ev)
	e.mu.Unlock()
	select {
	case e.ready <- struct{}{}:
	default:
	}
}

func (e *events[T]) pop() (xdsclient.Event[T], bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if len(e.queue) == 0 {
		return xdsclient.Event[T]{}, false
	}
	ev := e.queue[0]
	e.queue = e.queue[1:]
	return ev, true
}

// next waits for the next event matching keep, skipping others (for
// example stream errors while a server restarts).
func next[T any](ctx context.Context, t *testing.T, e *events[T], keep func(xdsclient.Event[T]) bool) xdsclient.Event[T] {
	t.Helper()
	for {
		if ev, ok := e.pop(); ok {
			if keep == nil || keep(ev) {
				return ev
			}
			continue
		}
		select {
		case <-e.ready:
		case <-ctx.Done():
			t.Fatalf("timed out waiting for an event: %v", ctx.Err())
		}
	}
}

func isValue[T any](ev xdsclient.Event[T]) bool    { return ev.Err == nil && !ev.NotFound }
func isNotFound[T any](ev xdsclient.Event[T]) bool { return ev.NotFound }

func setMesh(t *testing.T, srv *xdstest.Server, weights []xdsclient.ClusterWeight, addrs ...string) string {
	t.Helper()
	return srv.SetResources(t, nodeID,
		[]types.Resource{xdstest.ClientListener(listenerName, routeName)},
		[]types.Resource{xdstest.RouteConfig(routeName, "payments", weights...)},
		[]types.Resource{xdstest.EDSCluster(clusterV1, false), xdstest.EDSCluster(clusterV2, false)},
		[]types.Resource{xdstest.Endpoints(clusterV1, addrs...), xdstest.Endpoints(clusterV2, "127.0.0.2:9000")},
	)
}

func TestWatchChainDecodesEveryLevel(t *testing.T) {
	ctx := testutil.Context(t)
	srv := xdstest.NewServer(t)
	setMesh(t, srv, []xdsclient.ClusterWeight{{Name: clusterV1, Weight: 90}, {Name: clusterV2, Weight: 10}}, "127.0.0.1:8080", "127.0.0.1:8081")
	c := newClient(t, srv)

	// Each callback starts the next watch, as the balancer will: callbacks
	// may call Watch* because they never run under a client lock.
	lds, rds, cds, eds := newEvents[*xdsclient.Listener](), newEvents[*xdsclient.RouteConfig](), newEvents[*xdsclient.Cluster](), newEvents[*xdsclient.Endpoints]()
	c.WatchListener(listenerName, func(ev xdsclient.Event[*xdsclient.Listener]) {
		lds.fn(ev)
		if isValue(ev) {
			c.WatchRouteConfig(ev.Resource.HTTP.RouteConfigName, func(ev xdsclient.Event[*xdsclient.RouteConfig]) {
				rds.fn(ev)
				if isValue(ev) {
					c.WatchCluster(ev.Resource.VirtualHosts[0].Routes[0].Action.Clusters()[0], func(ev xdsclient.Event[*xdsclient.Cluster]) {
						cds.fn(ev)
						if isValue(ev) {
							c.WatchEndpoints(ev.Resource.EndpointsName(), eds.fn)
						}
					})
				}
			})
		}
	})

	l := next(ctx, t, lds, nil)
	if !isValue(l) || l.Resource.Name != listenerName || l.Resource.HTTP.RouteConfigName != routeName || l.Resource.IsServer() {
		t.Fatalf("listener event = %+v", l)
	}
	if got := l.Resource.HTTP.HTTPFilters; len(got) != 1 || got[0].TypeURL != "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" {
		t.Fatalf("http filters = %+v", got)
	}
	r := next(ctx, t, rds, nil)
	if !isValue(r) {
		t.Fatalf("route event = %+v", r)
	}
	wantWeights := []xdsclient.ClusterWeight{{Name: clusterV1, Weight: 90}, {Name: clusterV2, Weight: 10}}
	if got := r.Resource.VirtualHosts[0].Routes[0].Action.WeightedClusters; !slices.Equal(got, wantWeights) {
		t.Fatalf("weighted clusters = %+v, want %+v", got, wantWeights)
	}
	cl := next(ctx, t, cds, nil)
	if !isValue(cl) || cl.Resource.Name != clusterV1 || cl.Resource.Type != xdsclient.ClusterEDS || cl.Resource.LBPolicy != xdsclient.LBRoundRobin || cl.Resource.MaxRequests != 1024 {
		t.Fatalf("cluster event = %+v", cl)
	}
	e := next(ctx, t, eds, nil)
	if !isValue(e) {
		t.Fatalf("endpoints event = %+v", e)
	}
	var addrs []string
	for _, ep := range e.Resource.Localities[0].Endpoints {
		addrs = append(addrs, ep.Address)
	}
	if !slices.Equal(addrs, []string{"127.0.0.1:8080", "127.0.0.1:8081"}) {
		t.Fatalf("endpoint addresses = %v", addrs)
	}
	if !c.Connected() {
		t.Fatal("Connected() = false after responses arrived")
	}
}

func TestUpdatePushesNewVersion(t *testing.T) {
	ctx := testutil.Context(t)
	srv := xdstest.NewServer(t)
	setMesh(t, srv, []xdsclient.ClusterWeight{{Name: clusterV1, Weight: 1}}, "127.0.0.1:8080")
	c := newClient(t, srv)
	eds := newEvents[*xdsclient.Endpoints]()
	c.WatchEndpoints(clusterV1, eds.fn)
	if ev := next(ctx, t, eds, nil); !isValue(ev) || ev.Resource.Localities[0].Endpoints[0].Address != "127.0.0.1:8080" {
		t.Fatalf("first event = %+v", ev)
	}
	setMesh(t, srv, []xdsclient.ClusterWeight{{Name: clusterV1, Weight: 1}}, "127.0.0.1:9090")
	if ev := next(ctx, t, eds, nil); !isValue(ev) || ev.Resource.Localities[0].Endpoints[0].Address != "127.0.0.1:9090" {
		t.Fatalf("second event = %+v", ev)
	}
}

func TestNACKKeepsLastGoodAndNamesTheField(t *testing.T) {
	ctx := testutil.Context(t)
	srv := xdstest.NewServer(t)
	good := setMesh(t, srv, []xdsclient.ClusterWeight{{Name: clusterV1, Weight: 1}}, "127.0.0.1:8080")
	c := newClient(t, srv)
	rds := newEvents[*xdsclient.RouteConfig]()
	c.WatchRouteConfig(routeName, rds.fn)
	first := next(ctx, t, rds, nil)
	if !isValue(first) {
		t.Fatalf("first event = %+v", first)
	}

	// Both legs weigh 0: the route config is invalid.
	bad := setMesh(t, srv, []xdsclient.ClusterWeight{{Name: clusterV1, Weight: 0}, {Name: clusterV2, Weight: 0}}, "127.0.0.1:8080")
	const wantMsg = `route_config "payments-route": virtual_hosts[0].routes[0].route.weighted_clusters: total weight is 0`
	ev := next(ctx, t, rds, nil)
	if !errors.Is(ev.Err, xdsclient.ErrResourceRejected) || !strings.Contains(ev.Err.Error(), wantMsg) {
		t.Fatalf("event after bad update = %+v, want Err containing %q", ev, wantMsg)
	}
	nack, err := srv.WaitForRequest(ctx, func(r *discoverypb.DiscoveryRequest) bool {
		return r.GetTypeUrl() == typeRDS && r.GetErrorDetail() != nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if nack.GetVersionInfo() != good {
		t.Errorf("NACK version_info = %q, want the last good %q (bad was %q)", nack.GetVersionInfo(), good, bad)
	}
	if nack.GetResponseNonce() == "" {
		t.Error("NACK has no response_nonce")
	}
	if codes.Code(nack.GetErrorDetail().GetCode()) != codes.InvalidArgument || !strings.Contains(nack.GetErrorDetail().GetMessage(), wantMsg) {
		t.Errorf("NACK error_detail = %v, want INVALID_ARGUMENT containing %q", nack.GetErrorDetail(), wantMsg)
	}

	// A new watcher still gets the last good version from the cache.
	late := newEvents[*xdsclient.RouteConfig]()
	c.WatchRouteConfig(routeName, late.fn)
	if ev := next(ctx, t, late, nil); !isValue(ev) || ev.Resource.VirtualHosts[0].Routes[0].Action.Cluster != clusterV1 {
		t.Fatalf("cached event after NACK = %+v", ev)
	}

	// A fixed version is ACKed and delivered.
	fixed := setMesh(t, srv, []xdsclient.ClusterWeight{{Name: clusterV2, Weight: 1}}, "127.0.0.1:8080")
	if ev := next(ctx, t, rds, isValue); ev.Resource.VirtualHosts[0].Routes[0].Action.Cluster != clusterV2 {
		t.Fatalf("event after fix = %+v", ev)
	}
	if _, err := srv.WaitForRequest(ctx, func(r *discoverypb.DiscoveryRequest) bool {
		return r.GetTypeUrl() == typeRDS && r.GetVersionInfo() == fixed && r.GetErrorDetail() == nil
	}); err != nil {
		t.Fatalf("no ACK of version %s: %v", fixed, err)
	}
}

func TestReconnectResubscribes(t *testing.T) {
	ctx := testutil.Context(t)
	srv := xdstest.NewServer(t)
	v1 := setMesh(t, srv, []xdsclient.ClusterWeight{{Name: clusterV1, Weight: 1}}, "127.0.0.1:8080")
	c := newClient(t, srv)
	lds := newEvents[*xdsclient.Listener]()
	eds := newEvents[*xdsclient.Endpoints]()
	c.WatchListener(listenerName, lds.fn)
	c.WatchEndpoints(clusterV1, eds.fn)
	next(ctx, t, lds, isValue)
	next(ctx, t, eds, isValue)

	srv.Stop()
	if ev := next(ctx, t, eds, nil); !errors.Is(ev.Err, xdsclient.ErrStreamFailed) {
		t.Fatalf("event after server stop = %+v, want ErrStreamFailed", ev)
	}
	before := len(srv.Requests())
	setMesh(t, srv, []xdsclient.ClusterWeight{{Name: clusterV1, Weight: 1}}, "127.0.0.1:7070")
	srv.Restart(t)

	ev := next(ctx, t, eds, isValue)
	if got := ev.Resource.Localities[0].Endpoints[0].Address; got != "127.0.0.1:7070" {
		t.Fatalf("endpoint after reconnect = %s, want 127.0.0.1:7070", got)
	}
	// The resubscription carried the versions ACKed on the old stream.
	var resent bool
	for _, r := range srv.Requests()[before:] {
		if r.GetTypeUrl() == typeLDS && r.GetVersionInfo() == v1 && r.GetResponseNonce() == "" && slices.Equal(r.GetResourceNames(), []string{listenerName}) {
			resent = true
		}
	}
	if !resent {
		t.Errorf("no LDS resubscription with version %q after reconnect; requests: %v", v1, srv.Requests()[before:])
	}
}

func TestCachedWatchAndCancel(t *testing.T) {
	ctx := testutil.Context(t)
	srv := xdstest.NewServer(t)
	setMesh(t, srv, []xdsclient.ClusterWeight{{Name: clusterV1, Weight: 1}}, "127.0.0.1:8080")
	c := newClient(t, srv)
	first := newEvents[*xdsclient.Cluster]()
	c.WatchCluster(clusterV1, first.fn)
	next(ctx, t, first, isValue)

	second := newEvents[*xdsclient.Cluster]()
	cancelSecond := c.WatchCluster(clusterV1, second.fn)
	if ev := next(ctx, t, second, nil); !isValue(ev) || ev.Resource.Name != clusterV1 {
		t.Fatalf("cached event = %+v", ev)
	}
	// Both watchers share one subscription: no request names the cluster twice.
	for _, r := range srv.Requests() {
		seen := map[string]bool{}
		for _, n := range r.GetResourceNames() {
			if seen[n] {
				t.Fatalf("request %v names %q twice", r, n)
			}
			seen[n] = true
		}
	}

	cancelSecond()
	cancelSecond() // idempotent
	updated := xdstest.EDSCluster(clusterV1, false)
	updated.LbPolicy = 1 // LEAST_REQUEST
	srv.SetResources(t, nodeID,
		[]types.Resource{xdstest.ClientListener(listenerName, routeName)},
		[]types.Resource{xdstest.RouteConfig(routeName, "payments", xdsclient.ClusterWeight{Name: clusterV1, Weight: 1})},
		[]types.Resource{updated},
		[]types.Resource{xdstest.Endpoints(clusterV1, "127.0.0.1:8080")},
	)
	if ev := next(ctx, t, first, nil); !isValue(ev) || ev.Resource.LBPolicy != xdsclient.LBLeastRequest {
		t.Fatalf("update = %+v", ev)
	}
	// Close waits for the callback goroutine; nothing may reach the
	// cancelled watcher after cancel returned.
	_ = c.Close()
	if ev, ok := second.pop(); ok {
		t.Fatalf("cancelled watcher got %+v", ev)
	}
}

func TestNotFound(t *testing.T) {
	ctx := testutil.Context(t)
	srv := xdstest.NewServer(t)
	setMesh(t, srv, []xdsclient.ClusterWeight{{Name: clusterV1, Weight: 1}}, "127.0.0.1:8080")
	c := newClient(t, srv, xdsclient.WithResourceTimeout(50*time.Millisecond))

	// RDS: the server never answers for a missing name; the
	// does-not-exist timer reports it.
	missing := newEvents[*xdsclient.RouteConfig]()
	c.WatchRouteConfig("no-such-route", missing.fn)
	if ev := next(ctx, t, missing, nil); !ev.NotFound {
		t.Fatalf("missing route event = %+v, want NotFound", ev)
	}

	// LDS: a listener dropped from a response is deleted.
	lds := newEvents[*xdsclient.Listener]()
	c.WatchListener(listenerName, lds.fn)
	next(ctx, t, lds, isValue)
	srv.SetResources(t, nodeID, nil,
		[]types.Resource{xdstest.RouteConfig(routeName, "payments", xdsclient.ClusterWeight{Name: clusterV1, Weight: 1})},
		[]types.Resource{xdstest.EDSCluster(clusterV1, false)},
		[]types.Resource{xdstest.Endpoints(clusterV1, "127.0.0.1:8080")},
	)
	if ev := next(ctx, t, lds, nil); !isNotFound(ev) {
		t.Fatalf("event after listener removal = %+v, want NotFound", ev)
	}
}

func TestCloseLeavesNoGoroutines(t *testing.T) {
	ctx := testutil.Context(t)
	srv := xdstest.NewServer(t)
	setMesh(t, srv, []xdsclient.ClusterWeight{{Name: clusterV1, Weight: 1}}, "127.0.0.1:8080")
	baseline := runtime.NumGoroutine()

	c, err := xdsclient.New(srv.Bootstrap(nodeID), xdsclient.WithBackoff(fastBackoff))
	if err != nil {
		t.Fatal(err)
	}
	eds := newEvents[*xdsclient.Endpoints]()
	c.WatchEndpoints(clusterV1, eds.fn)
	next(ctx, t, eds, isValue)
	if err := c.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	// gRPC's transport goroutines exit asynchronously after Close returns.
	for runtime.NumGoroutine() > baseline {
		select {
		case <-ctx.Done():
			buf := make([]byte, 1<<20)
			t.Fatalf("%d goroutines after Close, %d before:\n%s", runtime.NumGoroutine(), baseline, buf[:runtime.Stack(buf, true)])
		case <-time.After(10 * time.Millisecond):
		}
	}
	// A watch on a closed client is inert.
	cancel := c.WatchListener(listenerName, func(xdsclient.Event[*xdsclient.Listener]) { t.Error("callback on closed client") })
	cancel()
}

func TestRewatchAfterCancel(t *testing.T) {
	ctx := testutil.Context(t)
	srv := xdstest.NewServer(t)
	setMesh(t, srv, []xdsclient.ClusterWeight{{Name: clusterV1, Weight: 1}}, "127.0.0.1:8080")
	c := newClient(t, srv, xdsclient.WithResourceTimeout(time.Minute))
	const typeCDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"

	keep := newEvents[*xdsclient.Cluster]()
	c.WatchCluster(clusterV2, keep.fn)
	next(ctx, t, keep, isValue)

	// Cancel and re-watch before the server hears of it: the cache answers.
	first := newEvents[*xdsclient.Cluster]()
	cancel := c.WatchCluster(clusterV1, first.fn)
	next(ctx, t, first, isValue)
	cancel()
	again := newEvents[*xdsclient.Cluster]()
	cancel = c.WatchCluster(clusterV1, again.fn)
	if ev := next(ctx, t, again, nil); !isValue(ev) || ev.Resource.Name != clusterV1 {
		t.Fatalf("re-watch event = %+v", ev)
	}

	// Cancel, let the server see the smaller subscription, then re-watch:
	// the server sends the cluster again.
	cancel()
	if _, err := srv.WaitForRequest(ctx, func(r *discoverypb.DiscoveryRequest) bool {
		return r.GetTypeUrl() == typeCDS && slices.Equal(r.GetResourceNames(), []string{clusterV2})
	}); err != nil {
		t.Fatal(err)
	}
	third := newEvents[*xdsclient.Cluster]()
	c.WatchCluster(clusterV1, third.fn)
	if ev := next(ctx, t, third, nil); !isValue(ev) || ev.Resource.Name != clusterV1 {
		t.Fatalf("event after resubscribe = %+v", ev)
	}
}
