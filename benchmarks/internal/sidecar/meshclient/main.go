// Command meshclient is the smallest mesh client: bootstrap from the
// environment (MESH_BOOTSTRAP), one echo to the host:port in its argument,
// then its goroutines and heap. The sidecar harness measures its binary,
// modules and time to first RPC against a plain grpc-go client's.
//
// Built with -tags leanprofile and run with MESH_CLIENT_PROFILE=<dir>, it
// also writes its goroutines (goroutines.txt) and live heap (heap.pprof)
// there after the first RPC: where the counts come from.
package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"mesh"
	"mesh/benchmarks/internal/echo"
)

func main() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := run(ctx, os.Args[1]); err != nil {
		fmt.Fprintln(os.Stderr, "meshclient:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, target string) error {
	m, err := mesh.New(ctx)
	if err != nil {
		return err
	}
	defer m.Close()
	conn, err := m.Dial(target)
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := echo.FirstRPC(ctx, conn); err != nil {
		return err
	}
	return writeProfiles()
}
