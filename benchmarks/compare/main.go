// Command compare runs the side-by-side benchmarks of package benchmarks in
// one process and prints them as the Markdown table kept in
// benchmarks/README.md: each mesh number next to plain grpc-go's, and their
// ratio.
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
	fmt.Println("| measurement | grpc-go + mTLS | + tracing | mesh | mesh / grpc-go | mesh / grpc-go + tracing |")
	fmt.Println("| --- | ---: | ---: | ---: | ---: | ---: |")
	r := bestOf(*rounds, benchmarks.UnaryGRPC, benchmarks.UnaryGRPCTraced, benchmarks.UnaryMesh)
	base, traced, mesh := r[0], r[1], r[2]
	row := func(name, unit string, get func(testing.BenchmarkResult) float64) {
		b, t, m := get(base), get(traced), get(mesh)
		fmt.Printf("| unary RPC, %s | %.0f %s | %.0f %s | %.0f %s | %s | %s |\n", name, b, unit, t, unit, m, unit, ratio(m, b), ratio(m, t))
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
