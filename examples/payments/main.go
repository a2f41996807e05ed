// Command payments serves the example Payments service as a mesh workload.
// Its bootstrap comes from MESH_BOOTSTRAP (see examples/controlplane).
//
//	MESH_BOOTSTRAP=/tmp/mesh/payments-v1/bootstrap.json go run ./examples/payments -version v1 -admin 127.0.0.1:15001
//
// With -admin it serves Istio's metrics on /metrics and the mesh's admin
// pages (/debug/config, /debug/clusters, /debug/graph) on that address.
package main

import (
	"context"
	"flag"
	"fmt"
	"net"
	"os"
	"os/signal"

	"mesh/examples/shop"
)

func main() {
	version := flag.String("version", "v1", "version to report: v1 or v2")
	listen := flag.String("listen", "127.0.0.1:0", "address to serve on")
	adminAddr := flag.String("admin", "", "address for /metrics and the admin pages, e.g. 127.0.0.1:15001 (default: none)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, *version, *listen, *adminAddr); err != nil {
		fmt.Fprintln(os.Stderr, "payments:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, version, listen, adminAddr string) error {
	if version != "v1" && version != "v2" {
		return fmt.Errorf("-version %q: want v1 or v2", version)
	}
	m, leave, err := shop.Join(ctx, adminAddr)
	if err != nil {
		return err
	}
	defer leave()
	lis, err := net.Listen("tcp", listen)
	if err != nil {
		return err
	}
	srv := m.NewGRPCServer()
	(&shop.Payments{Version: version}).Register(srv)
	go func() {
		<-ctx.Done()
		srv.GracefulStop()
	}()
	fmt.Printf("payments %s serving on %s\n", version, lis.Addr())
	return srv.Serve(lis)
}
