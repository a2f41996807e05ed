package balancer

import (
	"context"
	"errors"
	"net/http"
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
	// address; while block reports true, its calls wait for their
	// context's end.
	backend(t *testing.T, name string, block func() bool) string
	// serve publishes cluster with the endpoints addrs.
	serve(cluster string, addrs ...string)
	// routeAction points testTarget's listener at one route with action.
	routeAction(action xdsclient.RouteAction)
	// waitRouted makes one call that waits for the first routing table.
	waitRouted(ctx context.Context, t *testing.T)
	// call makes one call and returns the name of the backend that served it.
	call(ctx context.Context) (string, error)
	// deadlineExceeded reports whether err says the call ran out of time.
	deadlineExceeded(err error) bool
}

// forEachFrontEnd runs body over the gRPC and the HTTP front-end.
func forEachFrontEnd(t *testing.T, body func(t *testing.T, fe testFrontEnd)) {
	t.Run("grpc", func(t *testing.T) { body(t, &grpcFrontEnd{newTestEnv(t)}) })
	t.Run("http", func(t *testing.T) { body(t, &httpFrontEnd{newHTTPEnv(t)}) })
}

type grpcFrontEnd struct{ e *testEnv }

func (f *grpcFrontEnd) backend(t *testing.T, name string, block func() bool) string {
	b, _ := startScriptedBackend(t, func(ctx context.Context, _ int64) error {
		_ = grpc.SetHeader(ctx, metadata.Pairs("backend", name))
		if block != nil && block() {
			<-ctx.Done() // until the client gives up
			return ctx.Err()
		}
		return nil
	})
	return b.addr
}

func (f *grpcFrontEnd) serve(cluster string, addrs ...string) {
	f.e.xds.clusters.set(cluster, testCluster(cluster))
	f.e.xds.endpoints.set(cluster+"-eds", testEndpoints(cluster+"-eds", addrs...))
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

type httpFrontEnd struct{ e *httpEnv }

func (f *httpFrontEnd) backend(t *testing.T, name string, block func() bool) string {
	return startHTTPBackend(t, name, http1Plain, func(_ http.ResponseWriter, r *http.Request) {
		if block != nil && block() {
			<-r.Context().Done() // until the client gives up
		}
	}).addr
}

func (f *httpFrontEnd) serve(cluster string, addrs ...string) {
	f.e.xds.clusters.set(cluster, testCluster(cluster))
	f.e.xds.endpoints.set(cluster+"-eds", testEndpoints(cluster+"-eds", addrs...))
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

func (f *httpFrontEnd) call(ctx context.Context) (string, error) {
	name, _, err := f.e.get(ctx, "/")
	return name, err
}

func (f *httpFrontEnd) deadlineExceeded(err error) bool {
	return errors.Is(err, context.DeadlineExceeded)
}

// TestRouteTimeoutBoundsTheCall: the route's timeout ends a call that the
// backend holds, while the caller's own deadline (3 minutes, a hang guard)
// is far off and does not fire; a caller deadline shorter than the route's
// still wins.
func TestRouteTimeoutBoundsTheCall(t *testing.T) {
	forEachFrontEnd(t, func(t *testing.T, fe testFrontEnd) {
		ctx := testContext(t)
		var blocking atomic.Bool
		fe.serve("c", fe.backend(t, "a", blocking.Load))
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
