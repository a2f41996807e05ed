package balancer

import (
	"context"
	"net/http"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"

	"mesh/internal/testutil"
	"mesh/xdsclient"
)

// failurePercentageDetection ejects, every second, endpoints failing more
// than half their requests (at least 4 of them), for 10s times the
// ejection multiplier.
func failurePercentageDetection() *xdsclient.OutlierDetection {
	return &xdsclient.OutlierDetection{
		Interval:           time.Second,
		BaseEjectionTime:   10 * time.Second,
		MaxEjectionTime:    300 * time.Second,
		MaxEjectionPercent: 50,
		FailurePercentage:  &xdsclient.FailurePercentageEjection{Threshold: 50, EnforcementPercentage: 100, MinimumHosts: 2, RequestVolume: 4},
	}
}

func TestGRPCOutlierDetectionEjectsAndReturnsAFailingBackend(t *testing.T) {
	ctx := testutil.Context(t)
	clock := newFakeClock()
	e := newTestEnv(t, WithClock(clock))
	good, goodSvc := startScriptedBackend(t, func(context.Context, int64) error { return nil })
	bad, badSvc := startScriptedBackend(t, func(context.Context, int64) error { return status.Error(codes.Internal, "broken") })
	c := testCluster("c")
	c.OutlierDetection = failurePercentageDetection()
	e.xds.clusters.set("c", c)
	e.xds.endpoints.set("c-eds", testEndpoints("c-eds", good.addr, bad.addr))
	e.route(w("c", 1))

	// Round robin over both: wait until both are ready and serve.
	waitFor(ctx, t, "both backends to serve", func() bool {
		_, _ = e.client.EmptyCall(ctx, &testpb.Empty{})
		return goodSvc.calls.Load() > 0 && badSvc.calls.Load() > 0
	})
	clock.waitTimers(ctx, t, 1) // the detector's interval timer
	for range 20 {
		_, _ = e.client.EmptyCall(ctx, &testpb.Empty{})
	}
	clock.Advance(time.Second)

	before := badSvc.calls.Load()
	for i := range 20 {
		if _, err := e.client.EmptyCall(ctx, &testpb.Empty{}); err != nil {
			t.Fatalf("RPC %d after the ejection: %v, want every RPC on the good backend", i, err)
		}
	}
	if n := badSvc.calls.Load() - before; n != 0 {
		t.Fatalf("ejected backend got %d RPCs", n)
	}

	// Ten seconds (base ejection time x multiplier 1) later it is back.
	for range 10 {
		clock.Advance(time.Second)
	}
	waitFor(ctx, t, "the ejected backend to get traffic again", func() bool {
		_, _ = e.client.EmptyCall(ctx, &testpb.Empty{})
		return badSvc.calls.Load() > before
	})
}

func TestOutlierDetectorSuccessRateAndMultiplier(t *testing.T) {
	clock := newFakeClock()
	var timers syncWaitGroup
	changes := 0
	d := newOutlierDetector(clock, &timers.WaitGroup, func() { changes++ })
	defer func() {
		d.stop()
		timers.Wait()
	}()
	cfg := &xdsclient.OutlierDetection{
		Interval: time.Second, BaseEjectionTime: 10 * time.Second, MaxEjectionTime: 15 * time.Second, MaxEjectionPercent: 20,
		SuccessRate: &xdsclient.SuccessRateEjection{StdevFactor: 1000, EnforcementPercentage: 100, MinimumHosts: 5, RequestVolume: 10},
	}
	addrs := []string{"a", "b", "c", "d", "e", "f"}
	stats := d.sync(cfg, addrs)
	load := func() {
		for _, a := range addrs {
			for i := range 100 {
				// "f" succeeds half the time, the others always.
				stats[a].record(a != "f" || i%2 == 0)
			}
		}
	}
	load()
	clock.Advance(time.Second)
	if !stats["f"].ejected.Load() || changes != 1 {
		t.Fatalf("after one bad interval: f ejected %v, changes %d; want ejected, 1", stats["f"].ejected.Load(), changes)
	}
	for _, a := range addrs[:5] {
		if stats[a].ejected.Load() {
			t.Errorf("healthy %s ejected", a)
		}
	}
	// Back after base_ejection_time x 1.
	for range 10 {
		clock.Advance(time.Second)
	}
	if stats["f"].ejected.Load() {
		t.Fatal("f still ejected after 10s")
	}
	// Ejected again at once: the multiplier (now 1, decays one per clean
	// interval) makes it 2 x 10s, capped by max_ejection_time at 15s.
	load()
	clock.Advance(time.Second)
	if !stats["f"].ejected.Load() {
		t.Fatal("f not ejected the second time")
	}
	for range 14 {
		clock.Advance(time.Second)
	}
	if !stats["f"].ejected.Load() {
		t.Fatal("f returned before max_ejection_time (15s)")
	}
	clock.Advance(time.Second)
	if stats["f"].ejected.Load() {
		t.Fatal("f still ejected after max_ejection_time")
	}
}

func TestRoundTripperOutlierDetection(t *testing.T) {
	ctx := testutil.Context(t)
	clock := newFakeClock()
	e := newHTTPEnv(t, WithClock(clock))
	good := startHTTPBackend(t, "good", http1Plain, nil)
	bad := startHTTPBackend(t, "bad", http1Plain, func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusInternalServerError) })
	c := testCluster("c")
	c.OutlierDetection = failurePercentageDetection()
	e.xds.clusters.set("c", c)
	e.xds.endpoints.set("c-eds", testEndpoints("c-eds", good.addr, bad.addr))
	e.route(weightedRouteConfig("rc", w("c", 1)))

	badHits := func() int {
		bad.mu.Lock()
		defer bad.mu.Unlock()
		return bad.hits["/"]
	}
	for range 20 {
		_, _, _ = e.get(ctx, "/")
	}
	if badHits() == 0 {
		t.Fatal("round robin never reached the failing backend")
	}
	clock.waitTimers(ctx, t, 1)
	clock.Advance(time.Second)
	before := badHits()
	for i := range 20 {
		if name, _, err := e.get(ctx, "/"); err != nil || name != "good" {
			t.Fatalf("request %d after the ejection: %q, %v; want the good backend", i, name, err)
		}
	}
	if badHits() != before {
		t.Fatal("the ejected backend got requests")
	}
	for range 10 {
		clock.Advance(time.Second)
	}
	waitFor(ctx, t, "the ejected backend to get requests again", func() bool {
		_, _, _ = e.get(ctx, "/")
		return badHits() > before
	})
}
