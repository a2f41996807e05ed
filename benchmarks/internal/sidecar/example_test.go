package sidecar_test

import (
	"context"
	"fmt"
	"os"

	"mesh/benchmarks/internal/sidecar"
)

// A run of the plain grpc-go baseline and mesh, a few hundred echoes each,
// from a directory inside mesh's module (Run builds the role program).
func ExampleRun() {
	res, err := sidecar.Run(context.Background(), sidecar.Config{
		Variants: []string{sidecar.Plain, sidecar.Mesh},
		Reps:     1, One: 100, Eight: 200, OpenRate: 1000, Open: 100,
	})
	if err != nil {
		fmt.Println(err)
		return
	}
	res.WriteMarkdown(os.Stdout)
}
