package mesh_test

import (
	"context"
	"fmt"
	"log"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	"mesh"
	"mesh/controlplane"
)

// A server learns when the control plane lets it serve (gRFC A36): the
// callback fires when its inbound listener resource arrives, and again if
// the control plane takes it away.
func ExampleWithServingStateCallback() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cp, err := controlplane.New(ctx)
	if err != nil {
		log.Fatal(err)
	}
	defer cp.Close()
	dir, err := os.MkdirTemp("", "mesh-example-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	path, err := cp.WriteBootstrap(dir, controlplane.Workload{Name: "greeter", Service: "greeter", Port: 8080})
	if err != nil {
		log.Fatal(err)
	}

	states := make(chan bool, 8)
	m, err := mesh.New(ctx, mesh.WithBootstrapFile(path), mesh.WithLogger(slog.New(slog.DiscardHandler)),
		mesh.WithServingStateCallback(func(addr net.Addr, serving bool, err error) { states <- serving }))
	if err != nil {
		log.Fatal(err)
	}
	defer m.Close()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	srv := m.NewGRPCServer()
	served := make(chan struct{})
	go func() {
		defer close(served)
		srv.Serve(lis)
	}()
	defer func() { srv.Stop(); <-served }()
	fmt.Println("serving:", <-states)
	// Output: serving: true
}

// A workload that keeps its last good xDS configuration on disk starts,
// and routes, even while the control plane is unreachable; a short
// reconnect backoff finds the control plane again soon after it returns.
func ExampleWithXDSCache() {
	dir := os.TempDir()
	m, err := mesh.New(context.Background(),
		mesh.WithBootstrapFile(filepath.Join(dir, "bootstrap.json")),
		mesh.WithXDSCache(filepath.Join(dir, "xds-cache")),
		mesh.WithXDSBackoff(func(attempt int) time.Duration {
			return min(time.Duration(attempt+1)*100*time.Millisecond, 5*time.Second)
		}),
	)
	if err != nil {
		log.Print(err)
		return
	}
	defer m.Close()
}
