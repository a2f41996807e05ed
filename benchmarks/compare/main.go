// Command compare runs the side-by-side benchmarks of package benchmarks in
// one process and prints them as the Markdown table kept in
// benchmarks/README.md: plain grpc-go + mTLS, with the two headers every
// mesh call carries, with mesh's tracing, with grpc-go's own OpenTelemetry
// metrics, mesh, and mesh with every default on (BenchmarkUnaryMeshFull),
// each with its ratio to plain grpc-go.
//
//	go run ./benchmarks/compare
package main

import (
	"flag"
	"fmt"
	"os"
	"testing"

	"mesh/benchmarks"
	"mesh/benchmarks/internal/sidecar"
)

func main() {
	rounds := flag.Int("rounds", 3, "times to run each pair; the best (fastest) round of each side is kept")
	testing.Init()
	flag.Parse()

	fmt.Printf("machine: %s\n\n", sidecar.Machine())
	sides := []struct {
		name string
		f    func(*testing.B)
	}{
		{"grpc-go + mTLS", benchmarks.UnaryGRPC},
		{"+ mesh's two headers", benchmarks.UnaryGRPCHeaders},
		{"+ mesh tracing", benchmarks.UnaryGRPCTraced},
		{"+ grpc OTel metrics", benchmarks.UnaryGRPCOTel},
		{"mesh", benchmarks.UnaryMesh},
		{"mesh, everything on", benchmarks.UnaryMeshFull},
	}
	fs := make([]func(*testing.B), len(sides))
	header, rule := "| measurement |", "| --- |"
	for i, s := range sides {
		fs[i] = s.f
		header += " " + s.name + " |"
		rule += " ---: |"
	}
	for _, s := range sides[1:] {
		header += " " + s.name + " / grpc-go |"
		rule += " ---: |"
	}
	fmt.Println(header)
	fmt.Println(rule)
	r := bestOf(*rounds, fs...)
	row := func(name, unit string, get func(testing.BenchmarkResult) float64) {
		line := "| unary RPC, " + name + " |"
		for _, res := range r {
			line += fmt.Sprintf(" %.0f %s |", get(res), unit)
		}
		for _, res := range r[1:] {
			line += " " + ratio(get(res), get(r[0])) + " |"
		}
		fmt.Println(line)
	}
	row("time", "ns", func(r testing.BenchmarkResult) float64 { return float64(r.NsPerOp()) })
	row("memory", "B", func(r testing.BenchmarkResult) float64 { return float64(r.AllocedBytesPerOp()) })
	row("allocations", "allocs", func(r testing.BenchmarkResult) float64 { return float64(r.AllocsPerOp()) })

	pick := testing.Benchmark(benchmarks.RoutePick)
	fmt.Printf("\nroute match + weighted pick: %.1f ns/op, %d allocs/op (%d iterations)\n",
		float64(pick.T.Nanoseconds())/float64(pick.N), pick.AllocsPerOp(), pick.N)
}

// bestOf runs the sides in turn, rounds times, and keeps each side's
// fastest round: taking turns exposes every side to the same machine, and
// the fastest round is the one least disturbed by anything else on it.
func bestOf(rounds int, sides ...func(*testing.B)) []testing.BenchmarkResult {
	best := make([]testing.BenchmarkResult, len(sides))
	for range rounds {
		for i, f := range sides {
			r := testing.Benchmark(f)
			if r.N == 0 {
				fmt.Fprintln(os.Stderr, "compare: a benchmark failed; run go test -bench . ./benchmarks for its error")
				os.Exit(1)
			}
			if best[i].N == 0 || r.NsPerOp() < best[i].NsPerOp() {
				best[i] = r
			}
		}
	}
	return best
}

func ratio(a, b float64) string {
	if b == 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.2f", a/b)
}
