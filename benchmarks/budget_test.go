//go:build !race

package benchmarks

import "testing"

// TestUnaryMeshFullAllocationBudget keeps what the mesh adds to a unary
// call, everything on, in check against plain grpc-go with mTLS measured
// in the same run: 13 allocations today (benchmarks/TELEMETRY.md, tenth
// round), two spare for background goroutines' (the xDS streams, the
// control plane) amortized over fewer calls on a busy machine. The budget
// is the goal benchmarks/README.md holds mesh to: at most 15 more than
// plain grpc-go. A new per-call map or context pair, peer metadata back in
// every call's headers, a header read that copies again, or windows that
// grpc-go estimates again (a PING exchange each way per call) fails it.
func TestUnaryMeshFullAllocationBudget(t *testing.T) {
	const budget = 15
	plain := testing.Benchmark(UnaryGRPC).AllocsPerOp()
	full := testing.Benchmark(UnaryMeshFull).AllocsPerOp()
	t.Logf("allocations per call: %d plain grpc-go + mTLS, %d mesh with everything on", plain, full)
	if full-plain > budget {
		t.Errorf("the mesh adds %d allocations per call to plain grpc-go's %d, budget %d", full-plain, plain, budget)
	}
}
