package mesh_test

import (
	"context"
	"fmt"
	"log"
	"log/slog"
	"net"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"mesh"
	"mesh/controlplane"
)

// A workload joins the mesh with a bootstrap from the control plane, serves
// a gRPC service over the mesh's mTLS, and another calls it by service name.
// The embedded control plane stands in for istiod, as httptest does for a
// real server.
func Example() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	quiet := mesh.WithLogger(slog.New(slog.DiscardHandler))

	cp, err := controlplane.New(ctx, controlplane.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		log.Fatal(err)
	}
	defer cp.Close()
	dir, err := os.MkdirTemp("", "mesh-example-")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	// The server: bootstrap, SVID and inbound listener from the control plane.
	path, err := cp.WriteBootstrap(dir+"/greeter", controlplane.Workload{Name: "greeter", Service: "greeter", Port: 8080})
	if err != nil {
		log.Fatal(err)
	}
	server, err := mesh.New(ctx, mesh.WithBootstrapFile(path), quiet)
	if err != nil {
		log.Fatal(err)
	}
	defer server.Close()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	srv := server.NewGRPCServer()
	healthpb.RegisterHealthServer(srv, health.NewServer())
	go srv.Serve(lis)
	defer srv.Stop()

	// The client dials the service by name; the control plane routes it.
	path, err = cp.WriteBootstrap(dir+"/client", controlplane.Workload{Name: "client", Service: "client", Port: 8080})
	if err != nil {
		log.Fatal(err)
	}
	client, err := mesh.New(ctx, mesh.WithBootstrapFile(path), quiet)
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()
	conn, err := client.Dial("greeter.default.svc.cluster.local:8080")
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	// WaitForReady: the server may still be waiting for its inbound listener.
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}, grpc.WaitForReady(true))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(resp.GetStatus())
	// Output: SERVING
}
