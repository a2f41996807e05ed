// Command role is the program of the processes benchmarks/sidecar measures
// (see package roles). The harness builds it and starts it as each
// variant's server and client; started otherwise, it exits with status 2.
package main

import (
	"fmt"
	"os"

	"mesh/benchmarks/internal/sidecar/roles"
)

func main() {
	if !roles.Main() {
		fmt.Fprintln(os.Stderr, "role: started by benchmarks/sidecar only, which sets "+roles.Env)
		os.Exit(2)
	}
}
