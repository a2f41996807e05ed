package roles

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.opentelemetry.io/otel/metric"
	metricnoop "go.opentelemetry.io/otel/metric/noop"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	tracenoop "go.opentelemetry.io/otel/trace/noop"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	grpcotel "google.golang.org/grpc/stats/opentelemetry"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"mesh"
	"mesh/benchmarks/internal/echo"
	"mesh/internal/flowcontrol"
	"mesh/internal/workers"
	"mesh/telemetry/otelsdk"
)

// Env names the environment variable that makes a process one of the
// harness's (Main): "server" or "client". Env + "_ARGS" holds its flags.
const Env = "MESH_SIDECAR_ROLE"

// BootstrapFile is the bootstrap's name in a workload directory:
// BootstrapFile, which is not imported here because that
// would link the control plane into every measured process.
const BootstrapFile = "bootstrap.json"

// Main runs the process role that the harness asked for in the
// environment and reports true, or reports false at once when the process
// is not one of the harness's children. Call it first thing in main:
//
//	if roles.Main() {
//		return
//	}
func Main() bool {
	role := os.Getenv(Env)
	if role == "" {
		return false
	}
	fs := flag.NewFlagSet(role, flag.ContinueOnError)
	mode := fs.String("mode", "", "variant: B, Bw, Bh, plain, G, M, M-sdk, M-lean")
	dir := fs.String("dir", "", "the workload directory WriteBootstrap wrote")
	target := fs.String("target", "", "client: where to send the echo")
	appHeader := fs.Bool("app-header", false, "client: send one header of the program's own on every call")
	if err := fs.Parse(strings.Fields(os.Getenv(Env + "_ARGS"))); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(2)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	var err error
	switch role {
	case "server":
		err = runServer(ctx, *mode, *dir)
	case "client":
		err = runClient(ctx, *mode, *dir, *target, *appHeader)
	default:
		err = fmt.Errorf("unknown role %q", role)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "sidecar %s %s: %v\n", role, *mode, err)
		os.Exit(1)
	}
	return true
}

// sdkTelemetry is what G and M-sdk record with: the OpenTelemetry SDK's meter
// provider (read on demand, as a Prometheus scrape would) and its tracer
// provider sampling only what the caller sampled.
func sdkTelemetry() (*sdkmetric.MeterProvider, *sdktrace.TracerProvider) {
	return sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader())),
		sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.NeverSample())))
}

// meshTelemetry is what M records with: sdkTelemetry's, with Istio's
// histograms handed to the reader by telemetry/otelsdk's producer, as mesh
// documents for SDK users.
func meshTelemetry() (metric.MeterProvider, *sdktrace.TracerProvider) {
	p := otelsdk.NewProducer()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader(sdkmetric.WithProducer(p))))
	return p.MeterProvider(mp), sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.NeverSample())))
}

func meshOptions(mode, dir string) ([]mesh.Option, error) {
	opts := []mesh.Option{
		mesh.WithBootstrapFile(filepath.Join(dir, BootstrapFile)),
		mesh.WithLogger(slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))),
	}
	switch mode {
	case "M":
		mp, tp := meshTelemetry()
		return append(opts, mesh.WithMeterProvider(mp), mesh.WithTracerProvider(tp)), nil
	case "M-sdk":
		mp, tp := sdkTelemetry()
		return append(opts, mesh.WithMeterProvider(mp), mesh.WithTracerProvider(tp)), nil
	case "M-lean":
		return append(opts, mesh.WithMeterProvider(metricnoop.NewMeterProvider()), mesh.WithTracerProvider(tracenoop.NewTracerProvider())), nil
	}
	return nil, fmt.Errorf("mode %q is not a mesh mode", mode)
}

// runServer serves the echo on 127.0.0.1:0, prints "ready <addr>" and
// serves until its standard input closes.
func runServer(ctx context.Context, mode, dir string) error {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	var serve func() error
	var stop func()
	switch mode {
	case "plain", "B", "Bw", "Bh", "G":
		var opts []grpc.ServerOption
		if mode != "plain" {
			cfg, err := echo.MTLS(dir, true)
			if err != nil {
				return err
			}
			opts = append(opts, grpc.Creds(credentials.NewTLS(cfg)))
		}
		if mode == "Bw" { // the grpc-go options a mesh server sets
			opts = append(opts, grpc.NumStreamWorkers(workers.Stream()))
			opts = append(opts, flowcontrol.ServerOptions()...)
		}
		if mode == "G" {
			mp, _ := sdkTelemetry()
			opts = append(opts, grpcotel.ServerOption(grpcotel.Options{MetricsOptions: grpcotel.MetricsOptions{MeterProvider: mp}}))
		}
		srv := grpc.NewServer(opts...)
		echo.Register(srv)
		serve, stop = func() error { return srv.Serve(lis) }, srv.Stop
	case "M", "M-sdk", "M-lean":
		opts, err := meshOptions(mode, dir)
		if err != nil {
			return err
		}
		m, err := mesh.New(ctx, opts...)
		if err != nil {
			return err
		}
		defer m.Close()
		srv := m.NewGRPCServer()
		echo.Register(srv)
		serve, stop = func() error { return srv.Serve(lis) }, srv.Stop
	default:
		return fmt.Errorf("unknown server mode %q", mode)
	}
	served := make(chan error, 1)
	go func() { served <- serve() }()
	fmt.Printf("ready %s\n", lis.Addr())
	io.Copy(io.Discard, os.Stdin) // until the harness closes our stdin
	stop()
	<-served
	return nil
}

// clientConn dials target the way mode's client does.
func clientConn(ctx context.Context, mode, dir, target string) (grpc.ClientConnInterface, func(), error) {
	switch mode {
	case "plain", "B", "Bw", "Bh", "G":
		creds := insecure.NewCredentials()
		if mode != "plain" {
			cfg, err := echo.MTLS(dir, false)
			if err != nil {
				return nil, nil, err
			}
			creds = credentials.NewTLS(cfg)
		}
		opts := []grpc.DialOption{grpc.WithTransportCredentials(creds)}
		if mode == "Bh" {
			opts = append(opts, grpc.WithUnaryInterceptor(echo.SendMeshHeaders))
		}
		if mode == "Bw" { // the grpc-go options a mesh client sets
			opts = append(opts, flowcontrol.DialOptions()...)
		}
		if mode == "G" {
			mp, _ := sdkTelemetry()
			opts = append(opts, grpcotel.DialOption(grpcotel.Options{MetricsOptions: grpcotel.MetricsOptions{MeterProvider: mp}}))
		}
		conn, err := grpc.NewClient(target, opts...)
		if err != nil {
			return nil, nil, err
		}
		return conn, func() { conn.Close() }, nil
	case "M", "M-sdk", "M-lean":
		opts, err := meshOptions(mode, dir)
		if err != nil {
			return nil, nil, err
		}
		m, err := mesh.New(ctx, opts...)
		if err != nil {
			return nil, nil, err
		}
		conn, err := m.Dial(target)
		if err != nil {
			m.Close()
			return nil, nil, err
		}
		return conn, func() { conn.Close(); m.Close() }, nil
	}
	return nil, nil, fmt.Errorf("unknown client mode %q", mode)
}

// PhaseResult is what a client reports for one load phase, a JSON line on
// its standard output.
type PhaseResult struct {
	N       int           `json:"n"`
	Elapsed time.Duration `json:"elapsed"`
	P50     time.Duration `json:"p50"`
	P99     time.Duration `json:"p99"`
	Err     string        `json:"err,omitempty"`
}

// runClient connects, waits until the echo answers (xDS may still be
// arriving), warms up, prints "ready", then runs the load phases its
// standard input asks for ("closed <in flight> <n>", "open <per second>
// <n>"), answering each with a PhaseResult line.
func runClient(ctx context.Context, mode, dir, target string, appHeader bool) error {
	conn, closeConn, err := clientConn(ctx, mode, dir, target)
	if err != nil {
		return err
	}
	defer closeConn()
	if appHeader {
		conn = echo.WithAppHeader(conn)
	}
	req := echo.NewRequest()
	for resp := new(wrapperspb.BytesValue); ; {
		err := echo.Call(ctx, conn, req, resp)
		if err == nil {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("echo never answered: %w", err)
		case <-time.After(5 * time.Millisecond):
		}
	}
	if _, err := closedLoop(ctx, conn, req, 8, 2000); err != nil {
		return err
	}
	fmt.Println("ready")
	in := bufio.NewScanner(os.Stdin)
	out := json.NewEncoder(os.Stdout)
	for in.Scan() {
		f := strings.Fields(in.Text())
		if len(f) != 3 {
			return fmt.Errorf("bad command %q", in.Text())
		}
		a, errA := strconv.Atoi(f[1])
		n, errN := strconv.Atoi(f[2])
		if err := errors.Join(errA, errN); err != nil || a <= 0 || n <= 0 {
			return fmt.Errorf("bad command %q", in.Text())
		}
		var r PhaseResult
		switch f[0] {
		case "closed":
			r, err = closedLoop(ctx, conn, req, a, n)
		case "open":
			r, err = openLoop(ctx, conn, req, a, n)
		default:
			err = fmt.Errorf("bad command %q", in.Text())
		}
		if err != nil {
			r.Err = err.Error()
		}
		if err := out.Encode(r); err != nil {
			return err
		}
	}
	return in.Err()
}

// closedLoop sends n echoes from inflight goroutines, each sending its
// next as soon as its last is answered.
func closedLoop(ctx context.Context, conn grpc.ClientConnInterface, req *wrapperspb.BytesValue, inflight, n int) (PhaseResult, error) {
	lat := make([]time.Duration, n)
	var next atomic.Int64
	var firstErr error
	var once sync.Once
	var wg sync.WaitGroup
	start := time.Now()
	for range inflight {
		wg.Go(func() {
			resp := new(wrapperspb.BytesValue)
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				t := time.Now()
				if err := echo.Call(ctx, conn, req, resp); err != nil {
					once.Do(func() { firstErr = err })
					next.Store(int64(n)) // stop the others too
					return
				}
				lat[i] = time.Since(t)
			}
		})
	}
	wg.Wait()
	return summarize(lat, time.Since(start)), firstErr
}

// openLoop sends n echoes at perSecond, each at its intended time whether
// or not earlier ones were answered, and measures each from its intended
// send time, so a stall counts against every call it delays.
func openLoop(ctx context.Context, conn grpc.ClientConnInterface, req *wrapperspb.BytesValue, perSecond, n int) (PhaseResult, error) {
	lat := make([]time.Duration, n)
	period := time.Second / time.Duration(perSecond)
	jobs := make(chan int, n)
	var firstErr error
	var once sync.Once
	var wg sync.WaitGroup
	start := time.Now()
	// Enough senders that a slow call does not hold up the schedule; a
	// call waiting for a sender still counts from its intended time.
	for range 64 {
		wg.Go(func() {
			resp := new(wrapperspb.BytesValue)
			for i := range jobs {
				if err := echo.Call(ctx, conn, req, resp); err != nil {
					once.Do(func() { firstErr = err })
				}
				lat[i] = time.Since(start.Add(time.Duration(i) * period))
			}
		})
	}
	// The pacer sleeps in nanosleep on a thread of its own: the runtime's
	// timers wake a mostly idle process up to a millisecond late, which at
	// 1000/s would be the largest thing measured.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	for i := range n {
		if d := time.Until(start.Add(time.Duration(i) * period)); d > 0 {
			ts := syscall.NsecToTimespec(int64(d))
			for syscall.Nanosleep(&ts, &ts) == syscall.EINTR {
			}
		}
		jobs <- i
	}
	close(jobs)
	wg.Wait()
	return summarize(lat, time.Since(start)), firstErr
}

func summarize(lat []time.Duration, elapsed time.Duration) PhaseResult {
	slices.Sort(lat)
	at := func(q float64) time.Duration { return lat[min(len(lat)-1, int(q*float64(len(lat))))] }
	return PhaseResult{N: len(lat), Elapsed: elapsed, P50: at(0.50), P99: at(0.99)}
}
