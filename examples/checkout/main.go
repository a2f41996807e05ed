// Command checkout calls the example Payments service through the mesh in a
// loop and prints, every second, how the calls split across versions.
//
//	MESH_BOOTSTRAP=/tmp/mesh/checkout/bootstrap.json go run ./examples/checkout
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"time"

	"mesh"
	"mesh/examples/shop"
)

func main() {
	target := flag.String("target", shop.PaymentsTarget, "payments service host:port")
	perSecond := flag.Int("n", 1000, "calls per second-long round")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, *target, *perSecond); err != nil {
		fmt.Fprintln(os.Stderr, "checkout:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, target string, n int) error {
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
