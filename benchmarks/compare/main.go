// Command compare runs the side-by-side benchmarks of package benchmarks in
// one process and prints them as the Markdown table kept in
// benchmarks/README.md: each mesh number next to plain grpc-go's, and their
// ratio.
//
//	go run ./benchmarks/compare
package main

import (
	"bufio"
	"flag"
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"

	"mesh/benchmarks"
)

func main() {
	rounds := flag.Int("rounds", 3, "times to run each pair; the best (fastest) round of each side is kept")
	testing.Init()
	flag.Parse()

	fmt.Printf("machine: %s, %d cores, %s/%s, %s\n\n", cpuModel(), runtime.NumCPU(), runtime.GOOS, runtime.GOARCH, runtime.Version())
	fmt.Println("| measurement | grpc-go | mesh | mesh / grpc-go |")
	fmt.Println("| --- | ---: | ---: | ---: |")
	base, mesh := bestOf(*rounds, benchmarks.UnaryGRPC, benchmarks.UnaryMesh)
	row := func(name string, b, m float64, unit string) {
		ratio := "n/a"
		if b > 0 {
			ratio = fmt.Sprintf("%.2f", m/b)
		}
		fmt.Printf("| unary RPC, %s | %.0f %s | %.0f %s | %s |\n", name, b, unit, m, unit, ratio)
	}
	row("time", float64(base.NsPerOp()), float64(mesh.NsPerOp()), "ns")
	row("memory", float64(base.AllocedBytesPerOp()), float64(mesh.AllocedBytesPerOp()), "B")
	row("allocations", float64(base.AllocsPerOp()), float64(mesh.AllocsPerOp()), "allocs")

	pick := testing.Benchmark(benchmarks.RoutePick)
	fmt.Printf("\nroute match + weighted pick: %.1f ns/op, %d allocs/op (%d iterations)\n",
		float64(pick.T.Nanoseconds())/float64(pick.N), pick.AllocsPerOp(), pick.N)
}

// bestOf runs the two sides alternately, rounds times, and keeps each
// side's fastest round: alternating exposes both to the same machine, and
// the fastest round is the one least disturbed by anything else on it.
func bestOf(rounds int, base, mesh func(*testing.B)) (b, m testing.BenchmarkResult) {
	keep := func(best *testing.BenchmarkResult, f func(*testing.B)) {
		r := testing.Benchmark(f)
		if r.N == 0 {
			fmt.Fprintln(os.Stderr, "compare: a benchmark failed; run go test -bench . ./benchmarks for its error")
			os.Exit(1)
		}
		if best.N == 0 || r.NsPerOp() < best.NsPerOp() {
			*best = r
		}
	}
	for range rounds {
		keep(&b, base)
		keep(&m, mesh)
	}
	return b, m
}

func cpuModel() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return "unknown CPU"
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if k, v, ok := strings.Cut(s.Text(), ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown CPU"
}
