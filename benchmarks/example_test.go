package benchmarks_test

import (
	"fmt"
	"testing"

	"mesh/benchmarks"
)

// The benchmark bodies run outside go test too, through testing.Benchmark;
// that is how the compare command puts mesh beside plain grpc-go.
func Example() {
	r := testing.Benchmark(benchmarks.RoutePick)
	fmt.Println("allocs/op:", r.AllocsPerOp())
	// Output: allocs/op: 0
}
