package balancer

import (
	"context"
	"slices"
	"sync/atomic"
	"testing"

	"mesh/internal/testutil"
	"mesh/xdsclient"
)

func TestWRRScheduleKeepsProportions(t *testing.T) {
	for _, weights := range [][]float64{{1, 3}, {0.5, 0.25, 0.25}, {5, 1, 1, 1}} {
		schedule := wrrSchedule(weights)
		if len(schedule) == 0 {
			t.Fatalf("weights %v: no schedule", weights)
		}
		counts := make([]int, len(weights))
		for _, i := range schedule {
			counts[i]++
		}
		var total float64
		for _, w := range weights {
			total += w
		}
		for i, w := range weights {
			want := w / total * float64(len(schedule))
			if d := float64(counts[i]) - want; d > 1 || d < -1 {
				t.Errorf("weights %v: endpoint %d got %d of %d slots, want %.1f", weights, i, counts[i], len(schedule), want)
			}
		}
		// Smooth: the heaviest endpoint never takes every slot of a window
		// as long as the number of endpoints.
		for start := 0; start+len(weights) <= len(schedule); start++ {
			window := schedule[start : start+len(weights)]
			if slices.Min(window) == slices.Max(window) && weights[window[0]]/total < 0.5 {
				t.Errorf("weights %v: endpoint %d has a run of %d", weights, window[0], len(weights))
				break
			}
		}
	}
	if s := wrrSchedule([]float64{2, 2, 2}); s != nil {
		t.Errorf("equal weights got a schedule of %d, want plain round robin", len(s))
	}
}

func TestWeightedChooserDoesNotAllocate(t *testing.T) {
	c := newEndpointChooser(xdsclient.LBRoundRobin, []string{"a:1", "b:1"}, nil).withWeights([]float64{1, 3})
	var next atomic.Uint32
	if n := testing.AllocsPerRun(1000, func() { _ = c.choose(2, &next, 0, false) }); n != 0 {
		t.Errorf("choose allocates %v times per pick", n)
	}
}

func TestLocalityName(t *testing.T) {
	for _, tc := range []struct {
		l    xdsclient.Locality
		want string
	}{
		{xdsclient.Locality{}, ""},
		{xdsclient.Locality{Region: "us"}, "us"},
		{xdsclient.Locality{Region: "us", Zone: "us-a"}, "us/us-a"},
		{xdsclient.Locality{Zone: "us-a"}, "/us-a"},
		{xdsclient.Locality{Region: "us", SubZone: "rack1"}, "us//rack1"},
	} {
		if got := localityName(tc.l); got != tc.want {
			t.Errorf("localityName(%+v) = %q, want %q", tc.l, got, tc.want)
		}
	}
}

func TestWeightedEndpointsCombineLocalityAndEndpointWeights(t *testing.T) {
	eps := &xdsclient.Endpoints{Localities: []xdsclient.LocalityEndpoints{
		{Locality: xdsclient.Locality{Zone: "a"}, Weight: 1, Endpoints: []xdsclient.Endpoint{
			{Address: "10.0.0.1:80", Weight: 1}, {Address: "10.0.0.2:80", Weight: 3}}},
		{Locality: xdsclient.Locality{Zone: "b"}, Weight: 2, Endpoints: []xdsclient.Endpoint{
			{Address: "10.0.1.1:80", Weight: 7}, {Address: "10.0.1.2:80", Weight: 1, Health: xdsclient.HealthUnhealthy}}},
		{Locality: xdsclient.Locality{Zone: "c"}, Weight: 5, Priority: 1, Endpoints: []xdsclient.Endpoint{
			{Address: "10.0.2.1:80", Weight: 1}}},
	}}
	got := weightedEndpoints(eps)
	want := []weightedAddr{
		{addr: "10.0.0.1:80", weight: 0.25, locality: "/a", endpointWeight: 1},
		{addr: "10.0.0.2:80", weight: 0.75, locality: "/a", endpointWeight: 3},
		{addr: "10.0.1.1:80", weight: 2, locality: "/b", endpointWeight: 7},
		{addr: "10.0.2.1:80", priority: 1, weight: 5, locality: "/c", endpointWeight: 1},
	}
	if !slices.Equal(got, want) {
		t.Errorf("weightedEndpoints = %+v, want %+v", got, want)
	}
}

// twoLocalities puts backend a in a locality of weight wa and b in one of
// weight wb, at priorities pa and pb.
func twoLocalities(name string, a, b *backend, wa, wb, pa, pb uint32) *xdsclient.Endpoints {
	return &xdsclient.Endpoints{Name: name, Localities: []xdsclient.LocalityEndpoints{
		{Locality: xdsclient.Locality{Zone: "a"}, Weight: wa, Priority: pa, Endpoints: []xdsclient.Endpoint{{Address: a.addr, Weight: 1}}},
		{Locality: xdsclient.Locality{Zone: "b"}, Weight: wb, Priority: pb, Endpoints: []xdsclient.Endpoint{{Address: b.addr, Weight: 1}}},
	}}
}

func TestGRPCLocalityWeights(t *testing.T) {
	ctx := testutil.Context(t)
	e := newTestEnv(t)
	a, b := startBackend(t, "a"), startBackend(t, "b")
	e.xds.clusters.set("c", testCluster("c"))
	e.xds.endpoints.set("c-eds", twoLocalities("c-eds", a, b, 1, 3, 0, 0))
	e.route(w("c", 1))
	counts := cycleCounts(ctx, t, e.call, e.call)
	if counts["a"] != 32 || counts["b"] != 96 {
		t.Errorf("split %v, want a:32 b:96 (locality weights 1:3)", counts)
	}
}

// cycleCounts waits until eight warm calls in a row reach both backends
// "a" and "b", then counts the backends of 128 calls. Weighted round robin
// over locality weights 1:3 repeats a cycle of 64 picks (16 + 48), so any
// 128 consecutive picks of one channel split exactly 32/96.
func cycleCounts(ctx context.Context, t *testing.T, warm, call func(context.Context) (string, error)) map[string]int {
	t.Helper()
	testutil.WaitFor(ctx, t, "both localities", func() bool {
		seen := map[string]bool{}
		for range 8 {
			name, err := warm(ctx)
			if err != nil {
				return false
			}
			seen[name] = true
		}
		return seen["a"] && seen["b"]
	})
	counts := map[string]int{}
	for range 128 {
		name, err := call(ctx)
		if err != nil {
			t.Fatal(err)
		}
		counts[name]++
	}
	return counts
}

func TestGRPCPriorityFailover(t *testing.T) {
	ctx := testutil.Context(t)
	e := newTestEnv(t)
	primary, secondary := startBackend(t, "primary"), startBackend(t, "secondary")
	e.xds.clusters.set("c", testCluster("c"))
	e.xds.endpoints.set("c-eds", twoLocalities("c-eds", primary, secondary, 1, 1, 0, 1))
	e.route(w("c", 1))
	testutil.WaitFor(ctx, t, "the first RPC", func() bool {
		_, err := e.call(ctx)
		return err == nil
	})
	for range 10 {
		if name, err := e.call(ctx); err != nil || name != "primary" {
			t.Fatalf("RPC with priority 0 up: %q, %v; want primary", name, err)
		}
	}
	primary.srv.Stop()
	testutil.WaitFor(ctx, t, "failover to priority 1", func() bool {
		name, _ := e.call(ctx)
		return name == "secondary"
	})
	for range 10 {
		if name, err := e.call(ctx); err != nil || name != "secondary" {
			t.Fatalf("RPC with priority 0 down: %q, %v; want secondary", name, err)
		}
	}
}
