package balancer

import (
	"context"
	"errors"
	"io"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	grpcbalancer "google.golang.org/grpc/balancer"
	"google.golang.org/grpc/codes"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"mesh/internal/routeinfo"
	"mesh/internal/testutil"
	"mesh/xdsclient"
)

// scriptedService is a gRPC test service whose every call runs script,
// numbered from 1 in arrival order; a nil error lets the call succeed.
type scriptedService struct {
	testgrpc.UnimplementedTestServiceServer
	calls  atomic.Int64
	script func(ctx context.Context, call int64) error
}

func (s *scriptedService) EmptyCall(ctx context.Context, _ *testpb.Empty) (*testpb.Empty, error) {
	if err := s.script(ctx, s.calls.Add(1)); err != nil {
		return nil, err
	}
	return &testpb.Empty{}, nil
}

func (s *scriptedService) StreamingOutputCall(req *testpb.StreamingOutputCallRequest, stream testgrpc.TestService_StreamingOutputCallServer) error {
	if err := s.script(stream.Context(), s.calls.Add(1)); err != nil {
		return err
	}
	for range req.GetResponseParameters() {
		if err := stream.Send(&testpb.StreamingOutputCallResponse{}); err != nil {
			return err
		}
	}
	return nil
}

// startScriptedBackend serves a scriptedService on 127.0.0.1:0.
func startScriptedBackend(t *testing.T, script func(ctx context.Context, call int64) error) (*backend, *scriptedService) {
	t.Helper()
	svc := &scriptedService{script: script}
	return serveBackend(t, "scripted", svc, testutil.Listen(t)), svc
}

// routeAction points testTarget's listener at one route with action.
func (e *testEnv) routeAction(action xdsclient.RouteAction) {
	e.xds.listeners.set(testTarget, testListener(testTarget, "rc"))
	e.xds.routes.set("rc", actionRouteConfig("rc", action))
}

func actionRouteConfig(name string, action xdsclient.RouteAction) *xdsclient.RouteConfig {
	return &xdsclient.RouteConfig{Name: name, VirtualHosts: []xdsclient.VirtualHost{{
		Name: "vh", Domains: []string{"*"},
		Routes: []xdsclient.Route{{Name: "default", Match: xdsclient.RouteMatch{Prefix: ""}, Action: action}},
	}}}
}

func grpcRetryPolicy(retries uint32, on ...codes.Code) *xdsclient.RetryPolicy {
	return &xdsclient.RetryPolicy{GRPCCodes: on, NumRetries: retries, BackoffBase: time.Millisecond, BackoffMax: 2 * time.Millisecond}
}

// waitRouted waits until an RPC on e succeeds, which means the channel has a
// routing table (and the interceptors see the route).
func (e *testEnv) waitRouted(ctx context.Context, t *testing.T) {
	t.Helper()
	if _, err := e.client.EmptyCall(ctx, &testpb.Empty{}, grpc.WaitForReady(true)); err != nil {
		t.Fatalf("first RPC: %v", err)
	}
}

// TestGRPCRetryRetriesRetriableCodes: what only gRPC retries do
// (TestRetriesRetryUpToNumRetries has the rest): each attempt tells the
// backend how many came before it, and codes outside retry_on are not
// retried.
func TestGRPCRetryRetriesRetriableCodes(t *testing.T) {
	ctx := testutil.Context(t)
	e := newTestEnv(t)
	var mu sync.Mutex
	var previous []string
	var failNext atomic.Int64 // how many of the next calls fail
	b, svc := startScriptedBackend(t, func(ctx context.Context, _ int64) error {
		md, _ := metadata.FromIncomingContext(ctx)
		mu.Lock()
		previous = append(previous, strings.Join(md.Get(previousAttemptsHeader), ","))
		mu.Unlock()
		if failNext.Add(-1) >= 0 {
			return status.Error(codes.Unavailable, "first attempt fails")
		}
		return nil
	})
	e.serve("c", b)
	e.routeAction(xdsclient.RouteAction{Cluster: "c", RetryPolicy: grpcRetryPolicy(2, codes.Unavailable)})
	e.waitRouted(ctx, t)

	svc.calls.Store(0)
	mu.Lock()
	previous = nil
	mu.Unlock()
	failNext.Store(1)
	if _, err := e.client.EmptyCall(ctx, &testpb.Empty{}); err != nil {
		t.Fatalf("RPC whose first attempt fails: %v, want the retry to succeed", err)
	}
	if n := svc.calls.Load(); n != 2 {
		t.Errorf("backend saw %d attempts, want 2", n)
	}
	mu.Lock()
	if len(previous) != 2 || previous[0] != "" || previous[1] != "1" {
		t.Errorf("grpc-previous-rpc-attempts per attempt = %q, want [\"\" \"1\"]", previous)
	}
	mu.Unlock()

	// Codes outside retry_on are not retried.
	e.routeAction(xdsclient.RouteAction{Cluster: "c", RetryPolicy: grpcRetryPolicy(2, codes.Internal)})
	testutil.WaitFor(ctx, t, "the new retry policy", func() bool {
		r := e.builderRoute(t)
		return r != nil && r.Action.RetryPolicy.RetriesGRPC(codes.Internal)
	})
	svc.calls.Store(0)
	failNext.Store(1)
	if _, err := e.client.EmptyCall(ctx, &testpb.Empty{}); status.Code(err) != codes.Unavailable {
		t.Fatalf("RPC failing with a code not in retry_on: %v, want Unavailable", err)
	}
	if n := svc.calls.Load(); n != 1 {
		t.Errorf("backend saw %d attempts, want 1", n)
	}
}

// builderRoute returns the route the interceptors see for EmptyCall.
func (e *testEnv) builderRoute(t *testing.T) *xdsclient.Route {
	t.Helper()
	_, route, _ := e.builder.routeFor(context.Background(), e.conn, "/grpc.testing.TestService/EmptyCall")
	return route
}

func TestGRPCStreamRetriedBeforeFirstMessage(t *testing.T) {
	ctx := testutil.Context(t)
	e := newTestEnv(t)
	var failNext atomic.Int64
	b, svc := startScriptedBackend(t, func(context.Context, int64) error {
		if failNext.Add(-1) >= 0 {
			return status.Error(codes.Unavailable, "not yet")
		}
		return nil
	})
	e.serve("c", b)
	e.routeAction(xdsclient.RouteAction{Cluster: "c", RetryPolicy: grpcRetryPolicy(1, codes.Unavailable)})
	e.waitRouted(ctx, t)

	svc.calls.Store(0)
	failNext.Store(1)
	req := &testpb.StreamingOutputCallRequest{ResponseParameters: []*testpb.ResponseParameters{{}, {}, {}}}
	stream, err := e.client.StreamingOutputCall(ctx, req)
	if err != nil {
		t.Fatal(err)
	}
	got := 0
	for {
		_, err := stream.Recv()
		if err != nil {
			if !errors.Is(err, io.EOF) {
				t.Fatalf("stream: %v after %d messages", err, got)
			}
			break
		}
		got++
	}
	if got != 3 || svc.calls.Load() != 2 {
		t.Errorf("got %d messages over %d attempts, want 3 over 2", got, svc.calls.Load())
	}
}

// TestPendingTableDoesNotMixPolicies: while a new table waits for its new
// cluster, calls take the route's timeout and retries from the same table
// as their cluster, the old one. Matching the interceptor against the
// resolver's newest routes instead would give them the new route's 1 ns
// timeout while the old table's picker serves them, and fail them all.
func TestPendingTableDoesNotMixPolicies(t *testing.T) {
	ctx := testutil.Context(t)
	e := newTestEnv(t, WithPublishTimeout(time.Hour))
	a := startBackend(t, "a")
	slow, gate := startGatedBackend(t, "slow")
	e.serve("cluster-a", a)
	e.routeAction(xdsclient.RouteAction{Cluster: "cluster-a"})
	warmUp(ctx, t, e.call, "a")

	e.serve("cluster-slow", slow)
	e.routeAction(xdsclient.RouteAction{Cluster: "cluster-slow", Timeout: time.Nanosecond})
	testutil.WaitFor(ctx, t, "a connection attempt to the new cluster", func() bool {
		return len(e.creds.handshakes()) == 2
	})
	for i := range 50 {
		got, err := e.call(ctx)
		if err != nil || got != "a" {
			t.Fatalf("call %d while the new table is pending: got %q, %v; want a, with the old route's (no) timeout", i, got, err)
		}
	}
	gate.release()
	// Once published, the new route's timeout comes with the new cluster.
	testutil.WaitFor(ctx, t, "the new route's timeout", func() bool {
		_, err := e.call(ctx)
		return status.Code(err) == codes.DeadlineExceeded && ctx.Err() == nil
	})
}

// TestDecisionKeepsItsClusterAcrossTables: a call decided on one table and
// picked after the next was published goes to the cluster it was decided
// for, found by name in the new table.
func TestDecisionKeepsItsClusterAcrossTables(t *testing.T) {
	p := benchPicker(t, xdsclient.LBRoundRobin)
	old := p.table.Load()
	slot := &routeinfo.Slot{}
	dc, err := decide(routeinfo.WithSlot(t.Context(), slot), old, "/pkg.Payments/Charge")
	if err != nil || dc == nil {
		t.Fatalf("decide = %v, %v", dc, err)
	}
	want := old.clusters[dc.d.cluster].name
	// The next table lists the same clusters in reverse order.
	next := *old
	next.clusters = slices.Clone(old.clusters)
	slices.Reverse(next.clusters)
	r := *old.router
	r.clusters = slices.Clone(old.router.clusters)
	slices.Reverse(r.clusters)
	r.clusterIndex = map[string]int{}
	for i, name := range r.clusters {
		r.clusterIndex[name] = i
	}
	next.router = &r
	p.table.Store(&next)
	for range 20 {
		c, ok := dc.d.clusterOf(&next)
		if !ok || c.name != want {
			t.Fatalf("clusterOf the next table = %v, %v; want cluster %q", c, ok, want)
		}
		res, err := p.Pick(grpcbalancer.PickInfo{FullMethodName: "/pkg.Payments/Charge", Ctx: dc})
		if err != nil {
			t.Fatal(err)
		}
		res.Done(grpcbalancer.DoneInfo{})
		if got := slot.Load(); got == nil || got.Cluster != want {
			t.Fatalf("picked an endpoint of %+v, want one of cluster %q", got, want)
		}
	}
}
