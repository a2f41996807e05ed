package benchmarks

import "testing"

// BenchmarkRoutePick is the hot path alone: route match + weighted pick.
func BenchmarkRoutePick(b *testing.B) { RoutePick(b) }

// TestRoutePickDoesNotAllocate keeps the hot path allocation-free in the
// test suite, not only when someone runs the benchmark.
func TestRoutePickDoesNotAllocate(t *testing.T) {
	if r := testing.Benchmark(RoutePick); r.AllocsPerOp() != 0 {
		t.Fatalf("route match + weighted pick: %d allocs/op, want 0", r.AllocsPerOp())
	}
}
