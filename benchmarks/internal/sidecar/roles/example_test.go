package roles_test

import (
	"fmt"

	"mesh/benchmarks/internal/sidecar/roles"
)

// A process the harness did not start plays no role: Main returns false at
// once, and the program can say what it is for.
func ExampleMain() {
	if !roles.Main() {
		fmt.Println("not started by benchmarks/sidecar; it sets", roles.Env)
	}
	// Output:
	// not started by benchmarks/sidecar; it sets MESH_SIDECAR_ROLE
}
