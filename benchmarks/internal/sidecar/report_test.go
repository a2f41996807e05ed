package sidecar_test

import (
	"strings"
	"testing"
	"time"

	"mesh/benchmarks/internal/sidecar"
)

// TestReportPairsRepsWithB: the ratios rep by rep divide each rep's value by
// B's in the same rep, so a machine that slows for one rep moves both.
func TestReportPairsRepsWithB(t *testing.T) {
	// B is twice as slow in reps 2 and 3 as in rep 1, and M with it: rep
	// by rep M is 1.10 to 1.30 times B (throughput 0.80 to 0.90).
	measure := func(p50 time.Duration, throughput float64, cpu time.Duration) [3]sidecar.Measurement {
		m := sidecar.Measurement{N: 1000, P50: p50, P99: 2 * p50, Throughput: throughput,
			CPU: map[string]time.Duration{"client": cpu * 1000 / 2, "server": cpu * 1000 / 2}}
		return [3]sidecar.Measurement{m, m, m}
	}
	reps := func(ms ...[3]sidecar.Measurement) [3][]sidecar.Measurement {
		var out [3][]sidecar.Measurement
		for _, m := range ms {
			for ph := range out {
				out[ph] = append(out[ph], m[ph])
			}
		}
		return out
	}
	res := &sidecar.Results{
		Config: sidecar.Config{Variants: []string{sidecar.Plain, sidecar.Mesh}, Reps: 3, OpenRate: 1000},
		Runs: map[string][3][]sidecar.Measurement{
			sidecar.Plain: reps(measure(100*time.Microsecond, 1000, 80*time.Microsecond),
				measure(200*time.Microsecond, 500, 160*time.Microsecond),
				measure(200*time.Microsecond, 500, 160*time.Microsecond)),
			sidecar.Mesh: reps(measure(110*time.Microsecond, 900, 88*time.Microsecond),
				measure(260*time.Microsecond, 400, 192*time.Microsecond),
				measure(240*time.Microsecond, 450, 208*time.Microsecond)),
		},
	}
	var b strings.Builder
	res.WriteMarkdown(&b)
	for _, want := range []string{
		"Ratios to B rep by rep (3 reps; minimum / median / maximum)",
		"| 1 in flight, p50 | 1.10 / 1.20 / 1.30 |",
		"| 8 in flight, throughput | 0.80 / 0.90 / 0.90 |",
		"| 8 in flight, CPU per request, all processes | 1.10 / 1.20 / 1.30 |",
		"| 1000/s open loop, p99 | 1.10 / 1.20 / 1.30 |",
		"| 1 in flight, p50 | 200 µs | 240 µs (1.20x) |",
		"| 8 in flight, cores busy (throughput × CPU per request) | 0.08 | 0.08 (0.99x) |",
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, b.String())
		}
	}
	const appHeaderLine = "Every call carries one header of the program's own"
	if strings.Contains(b.String(), appHeaderLine) {
		t.Errorf("a run without AppHeader says %q", appHeaderLine)
	}
	res.Config.AppHeader = true
	b.Reset()
	res.WriteMarkdown(&b)
	if !strings.HasPrefix(b.String(), appHeaderLine) {
		t.Errorf("a run with AppHeader does not open with %q:\n%s", appHeaderLine, b.String())
	}
}
