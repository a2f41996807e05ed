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
//
// With -serve it then keeps the mesh running with traffic and prints the
// URLs of each workload's admin pages (/metrics, /debug/config) and of the
// control plane's live service graph, until interrupted. Traces go to an
// OTLP collector when OTEL_EXPORTER_OTLP_ENDPOINT is set.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"mesh/examples/shop"
)

const calls = 10_000

func main() {
	serve := flag.Bool("serve", os.Getenv("MESH_DEMO_SERVE") != "",
		"after the demo, keep the mesh running with traffic and print the admin and graph URLs, until interrupted (or set MESH_DEMO_SERVE=1)")
	flag.Parse()
	// Interrupt stops it; otherwise a hang guard, not a budget: on a busy
	// machine the 20,000 RPCs take what they take.
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	var then func(context.Context, *world, io.Writer) error
	if *serve {
		then = serveUntilDone
	} else {
		var stop context.CancelFunc
		ctx, stop = context.WithTimeout(ctx, 10*time.Minute)
		defer stop()
	}
	if err := runThen(ctx, os.Stdout, calls, then); err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, out io.Writer) error { return runThen(ctx, out, calls, nil) }

// runThen runs the demo with n RPCs per split, then (if not nil) then with
// the mesh still up.
func runThen(ctx context.Context, out io.Writer, calls int, then func(context.Context, *world, io.Writer) error) error {
	start := time.Now()
	logger := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	tp, err := newTracerProvider(ctx)
	if err != nil {
		return err
	}
	defer func() {
		// Bounded: an unreachable OTLP collector must not hang the exit.
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = tp.Shutdown(sctx)
	}()

	w, err := startWorld(ctx, logger, tp)
	if err != nil {
		return err
	}
	defer w.close()
	cp, conn := w.cp, w.checkout
	fmt.Fprintf(out, "control plane  xds://%s\n", cp.Addr())
	for _, version := range []string{"v1", "v2"} {
		fmt.Fprintf(out, "payments %s    %s\n", version, w.paymentsAddr[version])
	}
	// Each version serves once its listener has reached the control plane
	// and its endpoint checkout; until then calls routed to it fail fast,
	// as Envoy's do with no healthy upstream. Measure once both answered.
	for _, version := range []string{"v1", "v2"} {
		if err := shop.WaitFor(ctx, conn, 1, func(r shop.Reply) bool { return r.Version == version }); err != nil {
			return fmt.Errorf("payments %s never answered: %w", version, err)
		}
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
	if then != nil {
		return then(ctx, w, out)
	}
	return nil
}
