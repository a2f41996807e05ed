package balancer

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

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

// TestOutlierDetectionEjectsAndReturnsAFailingBackend: of two endpoints,
// the one failing every call is ejected at the detector's next interval
// (no call reaches it, every call succeeds on the other) and gets calls
// again after the base ejection time.
func TestOutlierDetectionEjectsAndReturnsAFailingBackend(t *testing.T) {
	forEachFrontEndWithClock(t, func(t *testing.T, fe testFrontEnd, clock *fakeClock) {
		ctx := testutil.Context(t)
		var goodCalls, badCalls atomic.Int64
		good := fe.backend(t, "good", func(context.Context) error { goodCalls.Add(1); return nil })
		bad := fe.backend(t, "bad", func(context.Context) error { badCalls.Add(1); return errors.New("broken") })
		c := testCluster("c")
		c.OutlierDetection = failurePercentageDetection()
		fe.serve(c, good, bad)
		fe.routeAction(xdsclient.RouteAction{Cluster: "c"})

		for range 20 {
			_, _ = fe.call(ctx)
		}
		if _, ok := fe.(*httpFrontEnd); ok && badCalls.Load() == 0 {
			// The RoundTripper dials on demand: round robin reaches both at once.
			t.Fatal("round robin never reached the failing backend")
		}
		// Round robin over both: wait until both are ready and serve.
		testutil.WaitFor(ctx, t, "both backends to serve", func() bool {
			_, _ = fe.call(ctx)
			return goodCalls.Load() > 0 && badCalls.Load() > 0
		})
		clock.waitTimers(ctx, t, 1) // the detector's interval timer
		for range 20 {
			_, _ = fe.call(ctx)
		}
		clock.Advance(time.Second)

		before := badCalls.Load()
		for i := range 20 {
			if name, err := fe.call(ctx); err != nil || name != "good" {
				t.Fatalf("call %d after the ejection: %q, %v; want every call on the good backend", i, name, err)
			}
		}
		if n := badCalls.Load() - before; n != 0 {
			t.Fatalf("ejected backend got %d calls", n)
		}

		// Ten seconds (base ejection time x multiplier 1) later it is back.
		for range 10 {
			clock.Advance(time.Second)
		}
		testutil.WaitFor(ctx, t, "the ejected backend to get calls again", func() bool {
			_, _ = fe.call(ctx)
			return badCalls.Load() > before
		})
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
