package sidecar

import (
	"bufio"
	"fmt"
	"io"
	"maps"
	"os"
	"runtime"
	"slices"
	"strings"
	"time"
)

// median returns the median of get over the reps of variant v's phase ph.
func (r *Results) median(v string, ph Phase, get func(Measurement) float64) float64 {
	runs := r.Runs[v][ph]
	if len(runs) == 0 {
		return 0
	}
	vals := make([]float64, len(runs))
	for i, m := range runs {
		vals[i] = get(m)
	}
	slices.Sort(vals)
	return middle(vals)
}

// middle returns the median of sorted values.
func middle(sorted []float64) float64 {
	if n := len(sorted); n%2 == 0 {
		return (sorted[n/2-1] + sorted[n/2]) / 2
	}
	return sorted[len(sorted)/2]
}

func us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// Names is how the report heads each variant's column.
var Names = map[string]string{
	Plain:        "B: grpc-go + mTLS",
	Sidecars:     "C: HAProxy mTLS pair, TCP",
	SidecarsHTTP: "C7: HAProxy mTLS pair, HTTP/2",
	Mesh:         "M: mesh",
	MeshSDK:      "M-sdk: mesh, SDK's own histograms",
	MeshLean:     "M-lean: mesh, no-op telemetry",
	GRPCOTel:     "G: grpc-go + mTLS + grpc OTel metrics",
	PlainWorkers: "Bw: grpc-go + mTLS + mesh's grpc-go options",
	PlainHeaders: "Bh: grpc-go + mTLS + mesh's two headers",
}

// WriteMarkdown writes the results as the tables benchmarks/README.md
// keeps: medians over the reps, each with its ratio to B.
func (r *Results) WriteMarkdown(w io.Writer) {
	vs := r.Config.Variants
	if r.Config.AppHeader {
		fmt.Fprint(w, "Every call carries one header of the program's own (-app-header).\n\n")
	}
	fmt.Fprintf(w, "| load (median of %d) |", r.Config.Reps)
	for _, v := range vs {
		fmt.Fprintf(w, " %s |", name(v))
	}
	fmt.Fprint(w, "\n| --- |"+strings.Repeat(" ---: |", len(vs))+"\n")
	row := func(label string, ph Phase, unit string, format string, get func(Measurement) float64) {
		base := r.median(Plain, ph, get)
		fmt.Fprintf(w, "| %s |", label)
		for _, v := range vs {
			x := r.median(v, ph, get)
			fmt.Fprintf(w, " "+format, x)
			if unit != "" {
				fmt.Fprint(w, " "+unit)
			}
			if base > 0 && v != Plain {
				fmt.Fprintf(w, " (%.2fx)", x/base)
			}
			fmt.Fprint(w, " |")
		}
		fmt.Fprintln(w)
	}
	p50 := func(m Measurement) float64 { return us(m.P50) }
	p99 := func(m Measurement) float64 { return us(m.P99) }
	cpu := func(m Measurement) float64 { return us(m.CPUPerRequest()) }
	row("1 in flight, p50", One, "µs", "%.0f", p50)
	row("1 in flight, p99", One, "µs", "%.0f", p99)
	row("8 in flight, throughput", Eight, "/s", "%.0f", func(m Measurement) float64 { return m.Throughput })
	row("8 in flight, CPU per request, all processes", Eight, "µs", "%.1f", cpu)
	for _, name := range r.processes() {
		row("8 in flight, CPU per request, "+name, Eight, "µs", "%.1f", func(m Measurement) float64 {
			return us(m.CPU[name] / time.Duration(max(m.N, 1)))
		})
	}
	// When the cores are the limit every variant keeps them equally busy,
	// and throughput is CPU per request read upside down.
	row("8 in flight, cores busy (throughput × CPU per request)", Eight, "", "%.2f", func(m Measurement) float64 {
		return m.Throughput * m.CPUPerRequest().Seconds()
	})
	row(fmt.Sprintf("%d/s open loop, p50", r.Config.OpenRate), Open, "µs", "%.0f", p50)
	row(fmt.Sprintf("%d/s open loop, p99", r.Config.OpenRate), Open, "µs", "%.0f", p99)
	row(fmt.Sprintf("%d/s open loop, CPU per request, all processes", r.Config.OpenRate), Open, "µs", "%.1f", cpu)

	r.writePairedRatios(w, p50, cpu, p99)

	if !slices.Contains(vs, Plain) {
		return
	}
	var meshes []string
	for _, v := range []string{Mesh, MeshSDK, MeshLean, Mesh + Before, MeshLean + Before} {
		if slices.Contains(vs, v) {
			meshes = append(meshes, v)
		}
	}
	for _, pair := range []string{Sidecars, SidecarsHTTP} {
		if slices.Contains(vs, pair) {
			r.writeAdded(w, pair, meshes, p50, p99, cpu)
		}
	}
}

// writeAdded writes what the sidecar pair and each mesh variant add over
// B, and each mesh's addition as a fraction of the pair's.
func (r *Results) writeAdded(w io.Writer, pair string, meshes []string, p50, p99, cpu func(Measurement) float64) {
	fmt.Fprintf(w, "\nWhat each adds over B, against %s (medians; goal: mesh adds at most 1/10 of the pair's latency and 1/5 of its CPU):\n\n", name(pair))
	fmt.Fprintf(w, "| added over B | %s |", pair)
	for _, v := range meshes {
		short, _, _ := strings.Cut(name(v), ":")
		if strings.HasSuffix(v, Before) {
			short += " (before)"
		}
		fmt.Fprintf(w, " %s | %s / %s |", short, short, pair)
	}
	fmt.Fprint(w, "\n| --- | ---: |"+strings.Repeat(" ---: | ---: |", len(meshes))+"\n")
	added := func(label string, ph Phase, unit string, get func(Measurement) float64) {
		base := r.median(Plain, ph, get)
		c := r.median(pair, ph, get) - base
		fmt.Fprintf(w, "| %s | %.1f %s |", label, c, unit)
		for _, v := range meshes {
			m := r.median(v, ph, get) - base
			fmt.Fprintf(w, " %.1f %s | %s |", m, unit, fraction(m, c))
		}
		fmt.Fprintln(w)
	}
	added("latency, 1 in flight, p50", One, "µs", p50)
	added(fmt.Sprintf("latency, %d/s open loop, p50", r.Config.OpenRate), Open, "µs", p50)
	added(fmt.Sprintf("latency, %d/s open loop, p99", r.Config.OpenRate), Open, "µs", p99)
	added("CPU per request, 8 in flight", Eight, "µs", cpu)
	added(fmt.Sprintf("CPU per request, %d/s open loop", r.Config.OpenRate), Open, "µs", cpu)
}

// pairedRatios returns, rep by rep, variant v's value over B's in the same
// rep of phase ph, sorted. Variants take turns within a rep, so a ratio
// compares measurements seconds apart, which a slow drift of the machine
// moves less than it moves the medians of whole columns.
func (r *Results) pairedRatios(v string, ph Phase, get func(Measurement) float64) []float64 {
	base, runs := r.Runs[Plain][ph], r.Runs[v][ph]
	var out []float64
	for i := range min(len(base), len(runs)) {
		if b := get(base[i]); b > 0 {
			out = append(out, get(runs[i])/b)
		}
	}
	slices.Sort(out)
	return out
}

// writePairedRatios writes, for the rows the goals name, every variant's
// per-rep ratios to B as minimum, median and maximum: how far one run's
// verdict can be trusted.
func (r *Results) writePairedRatios(w io.Writer, p50, cpu, p99 func(Measurement) float64) {
	vs := slices.DeleteFunc(slices.Clone(r.Config.Variants), func(v string) bool { return v == Plain })
	if !slices.Contains(r.Config.Variants, Plain) || len(vs) == 0 || r.Config.Reps < 2 {
		return
	}
	fmt.Fprintf(w, "\nRatios to B rep by rep (%d reps; minimum / median / maximum):\n\n| ratio to B, same rep |", r.Config.Reps)
	for _, v := range vs {
		fmt.Fprintf(w, " %s |", name(v))
	}
	fmt.Fprint(w, "\n| --- |"+strings.Repeat(" ---: |", len(vs))+"\n")
	row := func(label string, ph Phase, get func(Measurement) float64) {
		fmt.Fprintf(w, "| %s |", label)
		for _, v := range vs {
			if q := r.pairedRatios(v, ph, get); len(q) > 0 {
				fmt.Fprintf(w, " %.2f / %.2f / %.2f |", q[0], middle(q), q[len(q)-1])
			} else {
				fmt.Fprint(w, " |")
			}
		}
		fmt.Fprintln(w)
	}
	row("1 in flight, p50", One, p50)
	row("8 in flight, throughput", Eight, func(m Measurement) float64 { return m.Throughput })
	row("8 in flight, CPU per request, all processes", Eight, cpu)
	row(fmt.Sprintf("%d/s open loop, p99", r.Config.OpenRate), Open, p99)
}

// name heads variant v's column.
func name(v string) string {
	if base, ok := strings.CutSuffix(v, Before); ok {
		return Names[base] + " (before)"
	}
	return Names[v]
}

func fraction(m, c float64) string {
	if c <= 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.2f", m/c)
}

// processes names every process role seen, client first.
func (r *Results) processes() []string {
	seen := map[string]bool{}
	for _, runs := range r.Runs {
		for _, m := range runs[Eight] {
			for name := range m.CPU {
				seen[name] = true
			}
		}
	}
	names := slices.Sorted(maps.Keys(seen))
	slices.SortStableFunc(names, func(a, b string) int { return boolInt(a != "client") - boolInt(b != "client") })
	return names
}

// Machine describes the machine a run measured: CPU model, cores, OS,
// architecture and Go version.
func Machine() string {
	model := "unknown CPU"
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		defer f.Close()
		for s := bufio.NewScanner(f); s.Scan(); {
			if k, v, ok := strings.Cut(s.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
				model = strings.TrimSpace(v)
				break
			}
		}
	}
	return fmt.Sprintf("%s, %d cores, %s/%s, %s", model, runtime.NumCPU(), runtime.GOOS, runtime.GOARCH, runtime.Version())
}
