// Command checkout calls the example Payments service through the mesh in a
// loop and prints, every second, how the calls split across versions.
//
//	MESH_BOOTSTRAP=/tmp/mesh/checkout/bootstrap.json go run ./examples/checkout -admin 127.0.0.1:15003
//
// With -admin it serves Istio's metrics on /metrics and the mesh's admin
// pages (/debug/config, /debug/clusters, /debug/graph) on that address.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"time"

	"mesh/examples/shop"
)

func main() {
	target := flag.String("target", shop.PaymentsTarget, "payments service host:port")
	perSecond := flag.Int("n", 1000, "calls per second-long round")
	adminAddr := flag.String("admin", "", "address for /metrics and the admin pages, e.g. 127.0.0.1:15003 (default: none)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, *target, *perSecond, *adminAddr); err != nil {
		fmt.Fprintln(os.Stderr, "checkout:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, target string, n int, adminAddr string) error {
	m, leave, err := shop.Join(ctx, adminAddr)
	if err != nil {
		return err
	}
	defer leave()
	conn, err := m.Dial(target)
	if err != nil {
		return err
	}
	defer conn.Close()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		split := shop.Run(ctx, conn, n, 8)
		fmt.Printf("%s  %s\n", time.Now().Format(time.TimeOnly), split)
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}
