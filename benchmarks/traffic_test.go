package benchmarks

import "testing"

// BenchmarkTrafficRouteMatch is route matching over 10 routes x 5 header
// matchers plus a weighted pick.
func BenchmarkTrafficRouteMatch(b *testing.B) { TrafficRouteMatch(b) }

// BenchmarkTrafficTail compares round_robin and least_request tail latency
// with one slow backend, side by side in one run.
func BenchmarkTrafficTail(b *testing.B) {
	b.Run("round_robin", TrafficTailRoundRobin)
	b.Run("least_request", TrafficTailLeastRequest)
}

// TestTrafficRouteMatchDoesNotAllocate keeps header matching
// allocation-free in the test suite.
func TestTrafficRouteMatchDoesNotAllocate(t *testing.T) {
	if r := testing.Benchmark(TrafficRouteMatch); r.AllocsPerOp() != 0 {
		t.Fatalf("10 routes x 5 header matchers: %d allocs/op, want 0", r.AllocsPerOp())
	}
}
