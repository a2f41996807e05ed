package balancer

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
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

	"mesh/xdsclient"
)

// testFrontEnd is one way a test sends calls through the routing core: gRPC
// (resolver, LB policy and interceptors) or net/http (the RoundTripper).
// Behaviour tests run one body over both, as net/http's tests run one body
// over HTTP/1 and HTTP/2.
type testFrontEnd interface {
	// backend starts a backend named name on 127.0.0.1:0 and returns its
	// address; handle, if not nil, runs in each call's handler.
	backend(t *testing.T, name string, handle func(ctx context.Context)) string
	// serve publishes cluster with the endpoints addrs.
	serve(cluster *xdsclient.Cluster, addrs ...string)
	// routeAction points testTarget's listener at one route with action.
	routeAction(action xdsclient.RouteAction)
	// waitRouted makes one call that waits for the first routing table.
	waitRouted(ctx context.Context, t *testing.T)
	// call makes one call and returns the name of the backend that served it.
	call(ctx context.Context) (string, error)
	// deadlineExceeded reports whether err says the call ran out of time.
	deadlineExceeded(err error) bool
	// circuitOpen reports whether err says cluster's circuit breaker
	// refused the call, naming the cluster.
	circuitOpen(err error, cluster string) bool
}

// forEachFrontEnd runs body over the gRPC and the HTTP front-end.
func forEachFrontEnd(t *testing.T, body func(t *testing.T, fe testFrontEnd)) {
	t.Run("grpc", func(t *testing.T) { body(t, &grpcFrontEnd{newTestEnv(t)}) })
	t.Run("http", func(t *testing.T) { body(t, &httpFrontEnd{newHTTPEnv(t)}) })
}

type grpcFrontEnd struct{ e *testEnv }

func (f *grpcFrontEnd) backend(t *testing.T, name string, handle func(ctx context.Context)) string {
	b, _ := startScriptedBackend(t, func(ctx context.Context, _ int64) error {
		_ = grpc.SetHeader(ctx, metadata.Pairs("backend", name))
		if handle != nil {
			handle(ctx)
		}
		return nil
	})
	return b.addr
}

func (f *grpcFrontEnd) serve(cluster *xdsclient.Cluster, addrs ...string) {
	serveCluster(f.e.xds, cluster, addrs...)
}

// serveCluster publishes cluster, with addrs as the endpoints of its EDS
// service name+"-eds".
func serveCluster(xds *fakeXDS, cluster *xdsclient.Cluster, addrs ...string) {
	xds.clusters.set(cluster.Name, cluster)
	xds.endpoints.set(cluster.Name+"-eds", testEndpoints(cluster.Name+"-eds", addrs...))
}

func (f *grpcFrontEnd) routeAction(action xdsclient.RouteAction) { f.e.routeAction(action) }

func (f *grpcFrontEnd) waitRouted(ctx context.Context, t *testing.T) {
	t.Helper()
	if _, err := f.e.client.EmptyCall(ctx, &testpb.Empty{}, grpc.WaitForReady(true)); err != nil {
		t.Fatalf("first RPC: %v", err)
	}
}

func (f *grpcFrontEnd) call(ctx context.Context) (string, error) { return f.e.call(ctx) }

func (f *grpcFrontEnd) deadlineExceeded(err error) bool {
	return status.Code(err) == codes.DeadlineExceeded
}

func (f *grpcFrontEnd) circuitOpen(err error, cluster string) bool {
	return status.Code(err) == codes.Unavailable && strings.Contains(err.Error(), fmt.Sprintf("cluster %q", cluster)) &&
		strings.Contains(err.Error(), "circuit breaker")
}

type httpFrontEnd struct{ e *httpEnv }

func (f *httpFrontEnd) backend(t *testing.T, name string, handle func(ctx context.Context)) string {
	return startHTTPBackend(t, name, http1Plain, func(_ http.ResponseWriter, r *http.Request) {
		if handle != nil {
			handle(r.Context())
		}
	}).addr
}

func (f *httpFrontEnd) serve(cluster *xdsclient.Cluster, addrs ...string) {
	serveCluster(f.e.xds, cluster, addrs...)
}

func (f *httpFrontEnd) routeAction(action xdsclient.RouteAction) {
	f.e.route(actionRouteConfig("rc", action))
}

func (f *httpFrontEnd) waitRouted(ctx context.Context, t *testing.T) {
	t.Helper()
	if _, err := f.call(ctx); err != nil {
		t.Fatalf("first request: %v", err)
	}
}

// call also checks that the request went as HTTP/1.1 (the backends'
// protocol) with the authority as its Host.
func (f *httpFrontEnd) call(ctx context.Context) (string, error) {
	name, resp, err := f.e.get(ctx, "/")
	if err == nil && (resp.ProtoMajor != 1 || resp.Header.Get("proto") != "HTTP/1.1" || resp.Header.Get("host") != testTarget) {
		return "", fmt.Errorf("proto %s, server saw %s for host %q", resp.Proto, resp.Header.Get("proto"), resp.Header.Get("host"))
	}
	return name, err
}

func (f *httpFrontEnd) deadlineExceeded(err error) bool {
	return errors.Is(err, context.DeadlineExceeded)
}

func (f *httpFrontEnd) circuitOpen(err error, cluster string) bool {
	var unavailable *UnavailableError
	return errors.As(err, &unavailable) && errors.Is(err, ErrCircuitOpen) && strings.Contains(err.Error(), fmt.Sprintf("cluster %q", cluster))
}

// TestRouteTimeoutBoundsTheCall: the route's timeout ends a call that the
// backend holds, while the caller's own deadline (3 minutes, a hang guard)
// is far off and does not fire; a caller deadline shorter than the route's
// still wins.
func TestRouteTimeoutBoundsTheCall(t *testing.T) {
	forEachFrontEnd(t, func(t *testing.T, fe testFrontEnd) {
		ctx := testContext(t)
		var blocking atomic.Bool
		fe.serve(testCluster("c"), fe.backend(t, "a", func(ctx context.Context) {
			if blocking.Load() {
				<-ctx.Done() // until the client gives up
			}
		}))
		fe.routeAction(xdsclient.RouteAction{Cluster: "c", Timeout: 20 * time.Millisecond})
		fe.waitRouted(ctx, t)
		blocking.Store(true)

		_, err := fe.call(ctx)
		if !fe.deadlineExceeded(err) {
			t.Fatalf("call on a route with a timeout: %v, want DeadlineExceeded", err)
		}
		if ctx.Err() != nil {
			t.Fatalf("the caller's own deadline fired (%v): the route's timeout did not end the call", ctx.Err())
		}

		fe.routeAction(xdsclient.RouteAction{Cluster: "c", Timeout: time.Hour})
		short, cancel := context.WithTimeout(ctx, 10*time.Millisecond)
		defer cancel()
		if _, err := fe.call(short); !fe.deadlineExceeded(err) {
			t.Fatalf("call with a short caller deadline: %v, want DeadlineExceeded", err)
		}
		if ctx.Err() != nil {
			t.Fatalf("the hang guard fired: %v", ctx.Err())
		}
	})
}

// TestCircuitBreakerRejectsOverLimit: with max_requests 2 and two calls in
// flight, a third fails at once, naming the cluster's circuit breaker, and
// never reaches the backend; the two within the limit succeed.
func TestCircuitBreakerRejectsOverLimit(t *testing.T) {
	forEachFrontEnd(t, func(t *testing.T, fe testFrontEnd) {
		ctx := testContext(t)
		release := make(chan struct{})
		var blocking atomic.Bool
		var inHandler, calls atomic.Int64
		addr := fe.backend(t, "a", func(context.Context) {
			calls.Add(1)
			if blocking.Load() {
				inHandler.Add(1)
				<-release
			}
		})
		cluster := testCluster("c")
		cluster.MaxRequests = 2
		fe.serve(cluster, addr)
		fe.routeAction(xdsclient.RouteAction{Cluster: "c"})
		fe.waitRouted(ctx, t)

		blocking.Store(true)
		var wg sync.WaitGroup
		errs := make(chan error, 2)
		for range 2 {
			wg.Go(func() {
				_, err := fe.call(ctx)
				errs <- err
			})
		}
		waitFor(ctx, t, "two calls in flight", func() bool { return inHandler.Load() == 2 })
		before := calls.Load()
		_, err := fe.call(ctx)
		if !fe.circuitOpen(err, "c") {
			t.Fatalf("third concurrent call: %v, want a refusal naming cluster c's circuit breaker", err)
		}
		if calls.Load() != before {
			t.Errorf("the refused call reached the backend")
		}
		close(release)
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Errorf("call within the limit: %v", err)
			}
		}
		blocking.Store(false)
		// The finished calls released their slots.
		if _, err := fe.call(ctx); err != nil {
			t.Fatalf("call after the others finished: %v", err)
		}
	})
}

// TestWeightedSplit: 90/10/0 weighted clusters get 90 % and 10 % of the
// calls (5 sigma) and the weight-0 one none; over gRPC the weight-0 leg is
// connected all the same, so that a flip to it is instant.
func TestWeightedSplit(t *testing.T) {
	forEachFrontEnd(t, func(t *testing.T, fe testFrontEnd) {
		ctx := testContext(t)
		fe.serve(testCluster("cluster-a"), fe.backend(t, "a", nil))
		fe.serve(testCluster("cluster-b"), fe.backend(t, "b", nil))
		cAddr := fe.backend(t, "c", nil)
		fe.serve(testCluster("cluster-c"), cAddr)
		fe.routeAction(xdsclient.RouteAction{WeightedClusters: []xdsclient.ClusterWeight{
			w("cluster-a", 90), w("cluster-b", 10), w("cluster-c", 0)}})
		fe.waitRouted(ctx, t)
		for seen := map[string]bool{}; !seen["a"] || !seen["b"]; {
			got, err := fe.call(ctx)
			if err != nil {
				t.Fatalf("warm-up call: %v", err)
			}
			seen[got] = true
		}

		const n = 10000
		counts := callMany(ctx, t, fe.call, n, 8)
		p := 0.9
		sigma := math.Sqrt(n * p * (1 - p))
		if diff := math.Abs(float64(counts["a"]) - n*p); diff > 5*sigma {
			t.Errorf("cluster-a got %d of %d calls, want %.0f ± %.0f (5 sigma)", counts["a"], n, n*p, 5*sigma)
		}
		if counts["a"]+counts["b"] != n {
			t.Errorf("a+b got %d of %d calls (counts %v)", counts["a"]+counts["b"], n, counts)
		}
		if counts["c"] != 0 {
			t.Errorf("weight-0 cluster-c got %d calls, want exactly 0", counts["c"])
		}
		if g, ok := fe.(*grpcFrontEnd); ok {
			waitFor(ctx, t, "a connection to the weight-0 cluster", func() bool {
				for _, cs := range g.e.builder.ClusterStates() {
					for _, ep := range cs.Endpoints {
						if ep.Address == cAddr && ep.Health == "READY" {
							return true
						}
					}
				}
				return false
			})
		}
	})
}
