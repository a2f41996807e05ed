package balancer

import (
	"context"
	"errors"
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

const testFaultFilter = "envoy.filters.http.fault"

// faultListener is testListener with a fault filter configured with cfg
// (nil: the filter with an empty config, as istiod emits it).
func faultListener(name, rds string, cfg *xdsclient.FaultInjection) *xdsclient.Listener {
	if cfg == nil {
		cfg = &xdsclient.FaultInjection{}
	}
	l := testListener(name, rds)
	l.HTTP.HTTPFilters = []xdsclient.HTTPFilter{
		{Name: testFaultFilter, TypeURL: xdsclient.TypeURLFault, Config: cfg},
		{Name: "envoy.filters.http.router", TypeURL: "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"},
	}
	return l
}

func u32(v uint32) *uint32 { return &v }

func abortAll(code codes.Code) *xdsclient.FaultInjection {
	return &xdsclient.FaultInjection{Abort: &xdsclient.FaultAbort{GRPCStatus: u32(uint32(code)), PerMillion: 1_000_000, Denominator: 100}}
}

// faultEnv serves cluster "c" from a counting backend behind a listener
// with a fault filter.
func faultEnv(t *testing.T, cfg *xdsclient.FaultInjection, routes []xdsclient.Route, opts ...Option) (*testEnv, *scriptedService) {
	t.Helper()
	e := newTestEnv(t, opts...)
	b, svc := startScriptedBackend(t, func(context.Context, int64) error { return nil })
	e.serve("c", b)
	if routes == nil {
		routes = []xdsclient.Route{{Name: "default", Action: xdsclient.RouteAction{Cluster: "c"}}}
	}
	e.xds.listeners.set(testTarget, faultListener(testTarget, "rc", cfg))
	e.xds.routes.set("rc", &xdsclient.RouteConfig{Name: "rc", VirtualHosts: []xdsclient.VirtualHost{{Name: "vh", Domains: []string{"*"}, Routes: routes}}})
	return e, svc
}

func TestGRPCFaultAbortFromFilterConfig(t *testing.T) {
	ctx := testutil.Context(t)
	e, svc := faultEnv(t, abortAll(codes.PermissionDenied), nil)
	testutil.WaitFor(ctx, t, "the fault to apply", func() bool {
		_, err := e.client.EmptyCall(ctx, &testpb.Empty{}, grpc.WaitForReady(true))
		return status.Code(err) == codes.PermissionDenied
	})
	calls := svc.calls.Load()
	for range 5 {
		_, err := e.client.EmptyCall(ctx, &testpb.Empty{})
		if status.Code(err) != codes.PermissionDenied {
			t.Fatalf("RPC: %v, want PermissionDenied from the fault filter", err)
		}
	}
	if n := svc.calls.Load(); n != calls {
		t.Errorf("backend saw %d aborted RPCs, want 0", n-calls)
	}
}

func TestGRPCFaultRouteOverride(t *testing.T) {
	ctx := testutil.Context(t)
	routes := []xdsclient.Route{
		{Name: "aborted", Match: xdsclient.RouteMatch{Path: "/grpc.testing.TestService/EmptyCall", CaseSensitive: true},
			Action:          xdsclient.RouteAction{Cluster: "c"},
			FilterOverrides: map[string]any{testFaultFilter: abortAll(codes.ResourceExhausted)}},
		{Name: "default", Action: xdsclient.RouteAction{Cluster: "c"}},
	}
	e, _ := faultEnv(t, nil, routes)
	// The scripted backend does not implement UnaryCall: Unimplemented
	// means the RPC reached it.
	if _, err := e.client.UnaryCall(ctx, &testpb.SimpleRequest{}, grpc.WaitForReady(true)); status.Code(err) != codes.Unimplemented {
		t.Fatalf("UnaryCall (route without override): %v, want Unimplemented from the backend", err)
	}
	testutil.WaitFor(ctx, t, "the override", func() bool {
		_, err := e.client.EmptyCall(ctx, &testpb.Empty{})
		return status.Code(err) == codes.ResourceExhausted
	})
}

func TestGRPCFaultHeaderAbort(t *testing.T) {
	ctx := testutil.Context(t)
	cfg := &xdsclient.FaultInjection{Abort: &xdsclient.FaultAbort{FromHeader: true, PerMillion: 1_000_000, Denominator: 100}}
	e, _ := faultEnv(t, cfg, nil)
	e.waitRouted(ctx, t)
	hctx := metadata.AppendToOutgoingContext(ctx, xdsclient.FaultAbortGRPCHeader, "5")
	if _, err := e.client.EmptyCall(hctx, &testpb.Empty{}); status.Code(err) != codes.NotFound {
		t.Errorf("RPC with %s: 5: %v, want NotFound", xdsclient.FaultAbortGRPCHeader, err)
	}
	hctx = metadata.AppendToOutgoingContext(ctx, xdsclient.FaultAbortHTTPHeader, "503")
	if _, err := e.client.EmptyCall(hctx, &testpb.Empty{}); status.Code(err) != codes.Unavailable {
		t.Errorf("RPC with %s: 503: %v, want Unavailable", xdsclient.FaultAbortHTTPHeader, err)
	}
	hctx = metadata.AppendToOutgoingContext(ctx, xdsclient.FaultAbortGRPCHeader, "5", xdsclient.FaultAbortPercentageHeader, "0")
	if _, err := e.client.EmptyCall(hctx, &testpb.Empty{}); err != nil {
		t.Errorf("RPC with a 0 percentage header: %v, want success", err)
	}
	if _, err := e.client.EmptyCall(ctx, &testpb.Empty{}); err != nil {
		t.Errorf("RPC without fault headers: %v, want success", err)
	}
}

func TestGRPCFaultDelayOnInjectedClock(t *testing.T) {
	ctx := testutil.Context(t)
	clock := newFakeClock()
	cfg := &xdsclient.FaultInjection{
		Delay:           &xdsclient.FaultDelay{Fixed: time.Hour, PerMillion: 1_000_000, Denominator: 100},
		MaxActiveFaults: 1,
	}
	e, svc := faultEnv(t, cfg, nil, WithClock(clock))
	// Routes arrive before the first RPC is delayed; wait for the table.
	e.conn.Connect()
	testutil.WaitFor(ctx, t, "routes", func() bool {
		router, _, _ := e.builder.routeFor(ctx, e.conn, "/grpc.testing.TestService/EmptyCall")
		return router != nil && len(router.faults) == 1
	})
	done := make(chan error, 1)
	go func() {
		_, err := e.client.EmptyCall(ctx, &testpb.Empty{}, grpc.WaitForReady(true))
		done <- err
	}()
	clock.waitTimers(ctx, t, 1)
	if n := svc.calls.Load(); n != 0 {
		t.Fatalf("backend saw %d calls during the delay, want 0", n)
	}
	// max_active_faults is 1: a second RPC is not delayed.
	if _, err := e.client.EmptyCall(ctx, &testpb.Empty{}, grpc.WaitForReady(true)); err != nil {
		t.Fatalf("second RPC (over max_active_faults): %v", err)
	}
	clock.Advance(time.Hour)
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("delayed RPC: %v", err)
		}
	case <-ctx.Done():
		t.Fatal("delayed RPC did not finish after the clock advanced")
	}
	if n := svc.calls.Load(); n != 2 {
		t.Errorf("backend saw %d calls, want 2", n)
	}

}

// TestFaultOverrideAbortsAndDelays: a route's fault override aborts every
// call before it reaches the backend (UNAVAILABLE or 503, from HTTP status
// 503), then, changed to a one-minute delay, holds a call until the clock
// passes the minute and the backend then serves it; a call cancelled
// during its delay ends cancelled.
func TestFaultOverrideAbortsAndDelays(t *testing.T) {
	forEachFrontEndWithClock(t, func(t *testing.T, fe testFrontEnd, clock *fakeClock) {
		ctx := testutil.Context(t)
		var hits atomic.Int64
		fe.serve(testCluster("c"), fe.backend(t, "a", func(context.Context) error { hits.Add(1); return nil }))
		override := func(f *xdsclient.FaultInjection) {
			route := xdsclient.Route{Name: "default", Action: xdsclient.RouteAction{Cluster: "c"}}
			if f != nil {
				route.FilterOverrides = map[string]any{testFaultFilter: f}
			}
			fe.xds().routes.set("rc", &xdsclient.RouteConfig{Name: "rc", VirtualHosts: []xdsclient.VirtualHost{{Name: "vh", Domains: []string{"*"}, Routes: []xdsclient.Route{route}}}})
		}
		fe.xds().listeners.set(testTarget, faultListener(testTarget, "rc", nil))
		override(nil)
		fe.waitRouted(ctx, t)
		if _, err := fe.call(ctx); err != nil {
			t.Fatalf("call without a fault: %v", err)
		}

		override(&xdsclient.FaultInjection{Abort: &xdsclient.FaultAbort{HTTPStatus: 503, PerMillion: 1_000_000, Denominator: 100}})
		testutil.WaitFor(ctx, t, "the abort to apply", func() bool {
			_, err := fe.call(ctx)
			return fe.overloaded(err)
		})
		before := hits.Load()
		for range 5 {
			if _, err := fe.call(ctx); !fe.overloaded(err) {
				t.Fatalf("call: %v, want the injected abort", err)
			}
		}
		if n := hits.Load() - before; n != 0 {
			t.Errorf("backend saw %d aborted calls, want 0", n)
		}

		override(&xdsclient.FaultInjection{Delay: &xdsclient.FaultDelay{Fixed: time.Minute, PerMillion: 1_000_000, Denominator: 100}})
		// Calls still under the abort return at once; the first under the
		// delay arms its timer.
		var done chan error
		testutil.WaitFor(ctx, t, "a call held by the delay", func() bool {
			done = make(chan error, 1)
			go func() {
				_, err := fe.call(ctx)
				done <- err
			}()
			for clock.pending() == 0 {
				select {
				case err := <-done:
					if !fe.overloaded(err) {
						t.Fatalf("call before the delay applied: %v, want the abort", err)
					}
					return false
				case <-ctx.Done():
					return false
				case <-time.After(time.Millisecond):
				}
			}
			return true
		})
		if n := hits.Load() - before; n != 0 {
			t.Fatalf("backend saw the delayed call before the delay ended")
		}
		clock.Advance(time.Minute)
		if err := <-done; err != nil {
			t.Fatalf("delayed call: %v", err)
		}
		if n := hits.Load() - before; n != 1 {
			t.Errorf("backend saw %d calls after the delay, want 1", n)
		}

		cctx, cancel := context.WithCancel(ctx)
		go func() {
			clock.waitTimers(ctx, t, 1)
			cancel()
		}()
		if _, err := fe.call(cctx); !errors.Is(err, context.Canceled) && status.Code(err) != codes.Canceled {
			t.Errorf("call cancelled during its delay: %v, want cancelled", err)
		}
	})
}

func TestFaultDecisionsFromHeaders(t *testing.T) {
	h := func(kv ...string) Headers { return MetadataHeaders(metadata.Pairs(kv...)) }
	delay := &xdsclient.FaultDelay{FromHeader: true, PerMillion: 1_000_000, Denominator: 100}
	if d, ok := chooseDelay(delay, h(xdsclient.FaultDelayHeader, "250")); !ok || d != 250*time.Millisecond {
		t.Errorf("header delay 250: %v, %v; want 250ms", d, ok)
	}
	for _, bad := range []Headers{nil, h(), h(xdsclient.FaultDelayHeader, "soon"), h(xdsclient.FaultDelayHeader, "-1")} {
		if d, ok := chooseDelay(delay, bad); ok {
			t.Errorf("headers %v: delayed %v, want no delay", bad, d)
		}
	}
	// The percentage header can lower the configured share, never raise it.
	if _, ok := chooseDelay(delay, h(xdsclient.FaultDelayHeader, "1", xdsclient.FaultDelayPercentageHeader, "0")); ok {
		t.Error("percentage header 0 still delayed")
	}
	half := &xdsclient.FaultDelay{FromHeader: true, PerMillion: 0, Denominator: 100}
	if _, ok := chooseDelay(half, h(xdsclient.FaultDelayHeader, "1", xdsclient.FaultDelayPercentageHeader, "100")); ok {
		t.Error("percentage header raised a 0% fault")
	}

	abort := &xdsclient.FaultAbort{FromHeader: true, PerMillion: 1_000_000, Denominator: 100}
	for _, tc := range []struct {
		headers  Headers
		grpc     bool
		wantGRPC codes.Code
		wantHTTP int
	}{
		{h(xdsclient.FaultAbortGRPCHeader, "14"), true, codes.Unavailable, 503},
		{h(xdsclient.FaultAbortHTTPHeader, "404"), true, codes.Unimplemented, 404},
		{h(xdsclient.FaultAbortHTTPHeader, "429", xdsclient.FaultAbortGRPCHeader, "7"), true, codes.PermissionDenied, 403},
		{h(xdsclient.FaultAbortHTTPHeader, "429", xdsclient.FaultAbortGRPCHeader, "7"), false, codes.Unavailable, 429},
	} {
		got := chooseAbort(abort, tc.headers, tc.grpc)
		if got == nil || got.grpcCode != tc.wantGRPC || got.httpStatus != tc.wantHTTP {
			t.Errorf("headers %v (grpc %v): %+v, want %v/%d", tc.headers, tc.grpc, got, tc.wantGRPC, tc.wantHTTP)
		}
	}
	for _, bad := range []Headers{h(), h(xdsclient.FaultAbortGRPCHeader, "17"), h(xdsclient.FaultAbortHTTPHeader, "99")} {
		if got := chooseAbort(abort, bad, true); got != nil {
			t.Errorf("headers %v: aborted with %+v, want no abort", bad, got)
		}
	}
}
