//go:build !race

// Under the race detector sync.Pool drops some of what it is given.

package telemetry

import "testing"

// TestRequestIDSourceAllocatesPerBatch: one string allocation serves a
// batch of IDs.
func TestRequestIDSourceAllocatesPerBatch(t *testing.T) {
	var src requestIDSource
	src.next() // the first batch
	allocs := testing.AllocsPerRun(10*requestIDsPerBatch, func() { _ = src.next() })
	if max := 2.0 / requestIDsPerBatch; allocs > max {
		t.Errorf("%v allocations per ID, want at most %v", allocs, max)
	}
}
