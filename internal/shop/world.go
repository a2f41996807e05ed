package shop

import (
	"context"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"google.golang.org/grpc"

	"mesh"
	"mesh/controlplane"
	"mesh/xdsclient"
)

// World is the example mesh, started for one test or benchmark on real
// parts: the embedded control plane, payments v1 and v2 serving over mTLS,
// and a checkout mesh member with a channel to payments. Everything stops
// when the test ends.
type World struct {
	ControlPlane *controlplane.Server
	// Dirs holds each workload's directory of bootstrap and SVID files.
	Dirs map[string]string
	// Payments holds each payments version's listening address.
	Payments map[string]net.Addr
	Checkout *mesh.Mesh
	Conn     *grpc.ClientConn
	// ClientSpans and ServerSpans (by version) record what each side traced.
	ClientSpans *tracetest.SpanRecorder
	ServerSpans map[string]*tracetest.SpanRecorder
}

// WorldConfig shapes a World.
type WorldConfig struct {
	// V1 and V2 are the VirtualService weights to start with.
	V1, V2 int
	// CertRefresh, when set, is how often workloads re-read their SVID files.
	CertRefresh time.Duration
	// SnapshotHook lets a test tamper with what the control plane sends.
	SnapshotHook func(nodeID string, resources map[string][]types.Resource)
	// Sampler decides which spans are recorded; the default records all.
	Sampler sdktrace.Sampler
}

// TestLogger logs errors to the test's output, or everything when
// MESH_TEST_LOG is set.
func TestLogger(tb testing.TB) *slog.Logger {
	level := slog.LevelError
	if os.Getenv("MESH_TEST_LOG") != "" {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(tb.Output(), &slog.HandlerOptions{Level: level}))
}

// StartWorld starts the example mesh and waits until checkout reaches
// payments.
func StartWorld(tb testing.TB, ctx context.Context, cfg WorldConfig) *World {
	tb.Helper()
	logger := TestLogger(tb)
	cpOpts := []controlplane.Option{controlplane.WithLogger(logger)}
	if cfg.SnapshotHook != nil {
		cpOpts = append(cpOpts, controlplane.WithSnapshotHook(cfg.SnapshotHook))
	}
	cp, err := controlplane.New(ctx, cpOpts...)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { cp.Close() })
	w := &World{ControlPlane: cp, Dirs: map[string]string{}, Payments: map[string]net.Addr{}, ServerSpans: map[string]*tracetest.SpanRecorder{}}
	if err := cp.Apply(MeshYAML(cfg.V1, cfg.V2)); err != nil {
		tb.Fatal(err)
	}
	sampler := cfg.Sampler
	if sampler == nil {
		sampler = sdktrace.AlwaysSample()
	}
	join := func(workload controlplane.Workload) (*mesh.Mesh, *tracetest.SpanRecorder) {
		dir := filepath.Join(tb.TempDir(), workload.Name)
		path, err := cp.WriteBootstrap(dir, workload)
		if err != nil {
			tb.Fatal(err)
		}
		w.Dirs[workload.Name] = dir
		bs, err := xdsclient.LoadBootstrapFile(path)
		if err != nil {
			tb.Fatal(err)
		}
		if cfg.CertRefresh > 0 {
			for name, p := range bs.CertificateProviders {
				if p.FileWatcher != nil {
					p.FileWatcher.RefreshInterval = cfg.CertRefresh
					bs.CertificateProviders[name] = p
				}
			}
		}
		rec := tracetest.NewSpanRecorder()
		tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec), sdktrace.WithSampler(sampler))
		tb.Cleanup(func() { tp.Shutdown(context.Background()) })
		m, err := mesh.New(ctx, mesh.WithBootstrap(bs), mesh.WithLogger(logger.With("workload", workload.Name)), mesh.WithTracerProvider(tp))
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { m.Close() })
		return m, rec
	}
	for _, wl := range Workloads() {
		m, rec := join(wl)
		if wl.Service != "payments" {
			w.Checkout, w.ClientSpans = m, rec
			continue
		}
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			tb.Fatal(err)
		}
		srv := m.NewGRPCServer()
		version := wl.Labels["version"]
		(&Payments{Version: version}).Register(srv)
		served := make(chan struct{})
		go func() {
			defer close(served)
			srv.Serve(lis)
		}()
		tb.Cleanup(func() {
			srv.Stop()
			<-served
		})
		w.Payments[version] = lis.Addr()
		w.ServerSpans[version] = rec
	}
	conn, err := w.Checkout.Dial(PaymentsTarget)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { conn.Close() })
	w.Conn = conn
	if err := WaitFor(ctx, conn, 1, func(Reply) bool { return true }); err != nil {
		tb.Fatal(err)
	}
	return w
}
