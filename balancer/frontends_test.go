package balancer

import (
	"context"
	"errors"
	"fmt"
	"math"
	"net/http"
	"slices"
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

// testFrontEnd is one way a test sends calls through the routing core: gRPC
// (resolver, LB policy and interceptors) or net/http (the RoundTripper).
// Behaviour tests run one body over both, as net/http's tests run one body
// over HTTP/1 and HTTP/2.
type testFrontEnd interface {
	// backend starts a backend named name on 127.0.0.1:0 and returns its
	// address; handle, if not nil, runs in each call's handler, and an
	// error from it fails the call as overloaded (UNAVAILABLE, 503), or,
	// when it is the call's context's, as a server whose deadline passed.
	backend(t *testing.T, name string, handle func(ctx context.Context) error) string
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
	// overloaded reports whether err is a backend's overloaded answer.
	overloaded(err error) bool
	// retryPolicy retries overloaded answers up to n times.
	retryPolicy(n uint32) *xdsclient.RetryPolicy
	// clusterStates is the front-end's ClusterStates.
	clusterStates() []ClusterState
	// close closes the channel or the RoundTripper.
	close() error
	// xds is the fake xDS client the front-end watches.
	xds() *fakeXDS
}

// forEachFrontEnd runs body over the gRPC and the HTTP front-end, each
// made with opts.
func forEachFrontEnd(t *testing.T, body func(t *testing.T, fe testFrontEnd), opts ...Option) {
	runFrontEnds(t, false, func(t *testing.T, fe testFrontEnd, _ *fakeClock) { body(t, fe) }, opts)
}

// forEachFrontEndWithClock is forEachFrontEnd for a body that drives
// time: each front-end runs on a fake clock of its own.
func forEachFrontEndWithClock(t *testing.T, body func(t *testing.T, fe testFrontEnd, clock *fakeClock), opts ...Option) {
	runFrontEnds(t, true, body, opts)
}

func runFrontEnds(t *testing.T, fakeTime bool, body func(t *testing.T, fe testFrontEnd, clock *fakeClock), opts []Option) {
	withClock := func() ([]Option, *fakeClock) {
		if !fakeTime {
			return opts, nil
		}
		clock := newFakeClock()
		return append(slices.Clip(opts), WithClock(clock)), clock
	}
	t.Run("grpc", func(t *testing.T) {
		opts, clock := withClock()
		body(t, &grpcFrontEnd{e: newTestEnv(t, opts...), backends: map[string]*backend{}}, clock)
	})
	t.Run("http", func(t *testing.T) {
		opts, clock := withClock()
		rtOpts := make([]RoundTripperOption, 0, len(opts))
		for _, o := range opts {
			rtOpts = append(rtOpts, o)
		}
		body(t, &httpFrontEnd{newHTTPEnv(t, rtOpts...)}, clock)
	})
}

type grpcFrontEnd struct {
	e        *testEnv
	backends map[string]*backend // by address, for their connection counts
}

func (f *grpcFrontEnd) backend(t *testing.T, name string, handle func(ctx context.Context) error) string {
	b, _ := startScriptedBackend(t, func(ctx context.Context, _ int64) error {
		_ = grpc.SetHeader(ctx, metadata.Pairs("backend", name))
		if handle != nil {
			if err := handle(ctx); ctx.Err() != nil && errors.Is(err, ctx.Err()) {
				// As a server whose deadline passed answers.
				return status.FromContextError(err).Err()
			} else if err != nil {
				return status.Error(codes.Unavailable, err.Error())
			}
		}
		return nil
	})
	f.backends[b.addr] = b
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

func (f *grpcFrontEnd) overloaded(err error) bool { return status.Code(err) == codes.Unavailable }

func (f *grpcFrontEnd) retryPolicy(n uint32) *xdsclient.RetryPolicy {
	return grpcRetryPolicy(n, codes.Unavailable)
}

func (f *grpcFrontEnd) circuitOpen(err error, cluster string) bool {
	return status.Code(err) == codes.Unavailable && strings.Contains(err.Error(), fmt.Sprintf("cluster %q", cluster)) &&
		strings.Contains(err.Error(), "circuit breaker")
}

func (f *grpcFrontEnd) clusterStates() []ClusterState { return f.e.builder.ClusterStates() }
func (f *grpcFrontEnd) close() error                  { return f.e.conn.Close() }
func (f *grpcFrontEnd) xds() *fakeXDS                 { return f.e.xds }

type httpFrontEnd struct{ e *httpEnv }

func (f *httpFrontEnd) clusterStates() []ClusterState { return f.e.rt.ClusterStates() }
func (f *httpFrontEnd) close() error                  { return f.e.rt.Close() }
func (f *httpFrontEnd) xds() *fakeXDS                 { return f.e.xds }

func (f *httpFrontEnd) backend(t *testing.T, name string, handle func(ctx context.Context) error) string {
	return startHTTPBackend(t, name, http1Plain, func(w http.ResponseWriter, r *http.Request) {
		if handle != nil && handle(r.Context()) != nil {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}).addr
}

// httpStatusError is a response other than 200.
type httpStatusError struct {
	code int
	from string
}

func (e *httpStatusError) Error() string { return fmt.Sprintf("status %d from %s", e.code, e.from) }

func (f *httpFrontEnd) overloaded(err error) bool {
	var se *httpStatusError
	return errors.As(err, &se) && se.code == http.StatusServiceUnavailable
}

func (f *httpFrontEnd) retryPolicy(n uint32) *xdsclient.RetryPolicy {
	p := httpRetryPolicy(n)
	p.HTTP5xx = true
	return p
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
	if err != nil && resp != nil {
		return "", &httpStatusError{code: resp.StatusCode, from: resp.Header.Get("backend")}
	}
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
		ctx := testutil.Context(t)
		var blocking atomic.Bool
		fe.serve(testCluster("c"), fe.backend(t, "a", func(ctx context.Context) error {
			if blocking.Load() {
				<-ctx.Done() // until the client gives up
				return ctx.Err()
			}
			return nil
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
		ctx := testutil.Context(t)
		release := make(chan struct{})
		var blocking atomic.Bool
		var inHandler, calls atomic.Int64
		addr := fe.backend(t, "a", func(context.Context) error {
			calls.Add(1)
			if blocking.Load() {
				inHandler.Add(1)
				<-release
			}
			return nil
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
		testutil.WaitFor(ctx, t, "two calls in flight", func() bool { return inHandler.Load() == 2 })
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
		ctx := testutil.Context(t)
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
			testutil.WaitFor(ctx, t, "a connection to the weight-0 cluster", func() bool {
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

// TestRetryBudgetStopsAStorm: with a budget of one concurrent retry,
// whatever the load, a call's retry takes the one slot, and while it runs
// the calls that fail get their failure without a retry.
func TestRetryBudgetStopsAStorm(t *testing.T) {
	forEachFrontEnd(t, func(t *testing.T, fe testFrontEnd) {
		ctx := testutil.Context(t)
		release := make(chan struct{})
		retryRunning := make(chan struct{})
		var armed atomic.Bool
		var attempts, failures atomic.Int64
		addr := fe.backend(t, "a", func(context.Context) error {
			if !armed.Load() {
				return nil // warming up
			}
			if attempts.Add(1) == 2 {
				close(retryRunning) // the first call's retry holds the only slot
				<-release
				return nil
			}
			failures.Add(1)
			return errors.New("overloaded")
		})
		fe.serve(testCluster("c"), addr)
		fe.routeAction(xdsclient.RouteAction{Cluster: "c", RetryPolicy: fe.retryPolicy(3)})
		fe.waitRouted(ctx, t)
		armed.Store(true)

		first := make(chan error, 1)
		go func() {
			_, err := fe.call(ctx)
			first <- err
		}()
		select {
		case <-retryRunning:
		case <-ctx.Done():
			t.Fatal("the first call was never retried")
		}
		// The budget's one slot is taken: these fail without a retry.
		for i := range 5 {
			if _, err := fe.call(ctx); !fe.overloaded(err) {
				t.Fatalf("call %d while the budget is spent: %v, want the backend's overloaded answer", i, err)
			}
		}
		if n := failures.Load(); n != 6 {
			t.Errorf("backend failed %d attempts, want 6: the first call's first one and one per later call (no retries)", n)
		}
		close(release)
		if err := <-first; err != nil {
			t.Fatalf("retried call: %v", err)
		}
	}, WithRetryBudget(0, 1))
}

// TestRetriesRetryUpToNumRetries: a call whose first attempt gets the
// overloaded answer the retry policy names is retried and succeeds (two
// attempts); one that gets it every time fails with it after 1 +
// num_retries attempts.
func TestRetriesRetryUpToNumRetries(t *testing.T) {
	forEachFrontEnd(t, func(t *testing.T, fe testFrontEnd) {
		ctx := testutil.Context(t)
		var attempts, failNext atomic.Int64 // failNext: how many of the next attempts fail
		addr := fe.backend(t, "a", func(context.Context) error {
			attempts.Add(1)
			if failNext.Add(-1) >= 0 {
				return errors.New("overloaded")
			}
			return nil
		})
		fe.serve(testCluster("c"), addr)
		fe.routeAction(xdsclient.RouteAction{Cluster: "c", RetryPolicy: fe.retryPolicy(2)})
		fe.waitRouted(ctx, t)

		attempts.Store(0)
		failNext.Store(1)
		if _, err := fe.call(ctx); err != nil {
			t.Fatalf("call whose first attempt fails: %v, want the retry to succeed", err)
		}
		if n := attempts.Load(); n != 2 {
			t.Errorf("backend saw %d attempts, want 2", n)
		}

		// num_retries bounds the attempts: 1 + 2.
		attempts.Store(0)
		failNext.Store(10)
		if _, err := fe.call(ctx); !fe.overloaded(err) {
			t.Fatalf("call failing every attempt: %v, want the backend's overloaded answer", err)
		}
		if n := attempts.Load(); n != 3 {
			t.Errorf("backend saw %d attempts, want 3 (num_retries 2)", n)
		}
	})
}
