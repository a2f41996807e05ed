package sidecar

import (
	"testing"
	"time"
)

// TestMeasurementAddsSlices: the slices of a phase add up to one
// measurement, its throughput over the whole.
func TestMeasurementAddsSlices(t *testing.T) {
	var m Measurement
	m = m.add(Measurement{N: 100, Elapsed: time.Second, CPU: map[string]time.Duration{"client": 30 * time.Millisecond, "server": 20 * time.Millisecond}})
	m = m.add(Measurement{N: 300, Elapsed: time.Second, CPU: map[string]time.Duration{"client": 50 * time.Millisecond, "server": 40 * time.Millisecond}})
	if m.N != 400 || m.Elapsed != 2*time.Second || m.Throughput != 200 {
		t.Errorf("N %d, elapsed %v, throughput %v; want 400, 2s, 200/s", m.N, m.Elapsed, m.Throughput)
	}
	if m.CPU["client"] != 80*time.Millisecond || m.CPU["server"] != 60*time.Millisecond {
		t.Errorf("CPU %v; want client 80ms, server 60ms", m.CPU)
	}
	if got := m.CPUPerRequest(); got != 350*time.Microsecond {
		t.Errorf("CPU per request %v, want 350µs", got)
	}
}
