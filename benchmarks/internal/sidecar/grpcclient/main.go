// Command grpcclient is meshclient's baseline: plain grpc-go with mutual
// TLS from a workload's certificate files (go-spiffe's tls.Config), one
// echo to the address in its second argument.
//
//	grpcclient <workload dir> <host:port>
package main

import (
	"context"
	"fmt"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"mesh/benchmarks/internal/echo"
)

func main() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := run(ctx, os.Args[1], os.Args[2]); err != nil {
		fmt.Fprintln(os.Stderr, "grpcclient:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, dir, target string) error {
	cfg, err := echo.MTLS(dir, false)
	if err != nil {
		return err
	}
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(credentials.NewTLS(cfg)))
	if err != nil {
		return err
	}
	defer conn.Close()
	return echo.FirstRPC(ctx, conn)
}
