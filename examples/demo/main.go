// Command demo runs the whole example mesh in one command, on 127.0.0.1 ports
// the OS picks: the embedded control plane, payments v1 and v2, and checkout.
// Each workload is its own mesh member, with its own bootstrap, SVID and xDS
// stream, as separate processes would be; they share this process only so
// the demo is one command.
//
// It sends 10,000 RPCs split 90/10 by the control plane and prints the split,
// flips the VirtualService to 0/100 and prints it again, then shows the
// client identity the server saw through mTLS and a trace that spans both.
//
//	go run ./examples/demo
package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"mesh"
	"mesh/controlplane"
	"mesh/internal/shop"
)

const calls = 10_000

func main() {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := run(ctx, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, out io.Writer) error {
	start := time.Now()
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.AlwaysSample()))
	defer tp.Shutdown(context.Background())

	cp, err := controlplane.New(ctx, controlplane.WithLogger(logger))
	if err != nil {
		return err
	}
	defer cp.Close()
	fmt.Fprintf(out, "control plane  xds://%s\n", cp.Addr())

	dir, err := os.MkdirTemp("", "mesh-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bootstraps := map[string]string{}
	for _, w := range shop.Workloads() {
		path, err := cp.WriteBootstrap(filepath.Join(dir, w.Name), w)
		if err != nil {
			return fmt.Errorf("bootstrap for %s: %w", w.Name, err)
		}
		bootstraps[w.Name] = path
	}
	if err := cp.Apply(shop.MeshYAML(90, 10)); err != nil {
		return err
	}

	join := func(name string) (*mesh.Mesh, error) {
		return mesh.New(ctx, mesh.WithBootstrapFile(bootstraps[name]), mesh.WithLogger(logger.With("workload", name)), mesh.WithTracerProvider(tp))
	}
	for _, version := range []string{"v1", "v2"} {
		m, err := join("payments-" + version)
		if err != nil {
			return err
		}
		defer m.Close()
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return err
		}
		srv := m.NewGRPCServer()
		(&shop.Payments{Version: version}).Register(srv)
		go srv.Serve(lis)
		defer srv.Stop()
		fmt.Fprintf(out, "payments %s    %s\n", version, lis.Addr())
	}

	checkout, err := join("checkout")
	if err != nil {
		return err
	}
	defer checkout.Close()
	conn, err := checkout.Dial(shop.PaymentsTarget)
	if err != nil {
		return err
	}
	defer conn.Close()
	if err := shop.WaitFor(ctx, conn, 1, func(shop.Reply) bool { return true }); err != nil {
		return fmt.Errorf("payments never answered: %w", err)
	}

	split := shop.Run(ctx, conn, calls, 16)
	fmt.Fprintf(out, "\nVirtualService 90/10, %d RPCs:  %s\n", calls, split)

	if err := cp.Apply(shop.MeshYAML(0, 100)); err != nil {
		return err
	}
	if err := shop.WaitFor(ctx, conn, 50, func(r shop.Reply) bool { return r.Version == "v2" }); err != nil {
		return fmt.Errorf("flip to 0/100 never took effect: %w", err)
	}
	split = shop.Run(ctx, conn, calls, 16)
	fmt.Fprintf(out, "VirtualService 0/100, %d RPCs:  %s\n", calls, split)

	// One traced call: the span started here is the parent of the client
	// span, which is the parent of the server span that payments sees.
	tctx, span := tp.Tracer("demo").Start(ctx, "checkout")
	reply, err := shop.Charge(tctx, conn)
	span.End()
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "\npayments %s saw caller  %s\n", reply.Version, reply.Caller)
	fmt.Fprintf(out, "trace id  checkout %s  payments %s  same=%t\n",
		span.SpanContext().TraceID(), reply.TraceID, span.SpanContext().TraceID().String() == reply.TraceID)
	if split.Failed() > 0 {
		return fmt.Errorf("%d RPCs failed", split.Failed())
	}
	fmt.Fprintf(out, "done in %.1fs\n", time.Since(start).Seconds())
	return nil
}
