package workers_test

import (
	"fmt"
	"runtime"

	"mesh/internal/workers"
)

// At least 16, and four per core beyond four cores.
func ExampleStream() {
	prev := runtime.GOMAXPROCS(2)
	defer runtime.GOMAXPROCS(prev)
	fmt.Println(workers.Stream())
	runtime.GOMAXPROCS(8)
	fmt.Println(workers.Stream())
	// Output:
	// 16
	// 32
}
