package shop

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
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
	return StartWorldWith(tb, ctx, cfg, WorldOptions{})
}

// WorldOptions add to a WorldConfig what StartWorldWith passes to the parts
// it starts.
type WorldOptions struct {
	// ControlPlane options are added to the control plane's.
	ControlPlane []controlplane.Option
	// Mesh, when set, returns extra options for a workload's mesh; dir is
	// the workload's directory of bootstrap and SVID files.
	Mesh func(w controlplane.Workload, dir string) []mesh.Option
	// PaymentsServer, when set, returns extra options for a payments
	// version's gRPC server.
	PaymentsServer func(w controlplane.Workload) []grpc.ServerOption
}

// StartWorldWith is StartWorld with options for the control plane and the
// workloads' meshes.
func StartWorldWith(tb testing.TB, ctx context.Context, cfg WorldConfig, wo WorldOptions) *World {
	tb.Helper()
	logger := TestLogger(tb)
	cpOpts := []controlplane.Option{controlplane.WithLogger(logger)}
	if cfg.SnapshotHook != nil {
		cpOpts = append(cpOpts, controlplane.WithSnapshotHook(cfg.SnapshotHook))
	}
	cp, err := controlplane.New(ctx, append(cpOpts, wo.ControlPlane...)...)
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
	for _, wl := range Workloads() {
		dir := filepath.Join(tb.TempDir(), wl.Name)
		if _, err := cp.WriteBootstrap(dir, wl); err != nil {
			tb.Fatal(err)
		}
		w.Dirs[wl.Name] = dir
		bs, err := LoadBootstrap(dir, cfg.CertRefresh)
		if err != nil {
			tb.Fatal(err)
		}
		rec := tracetest.NewSpanRecorder()
		tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec), sdktrace.WithSampler(sampler))
		tb.Cleanup(func() { tp.Shutdown(context.Background()) })
		opts := []mesh.Option{mesh.WithBootstrap(bs), mesh.WithLogger(logger.With("workload", wl.Name)), mesh.WithTracerProvider(tp)}
		if wo.Mesh != nil {
			opts = append(opts, wo.Mesh(wl, dir)...)
		}
		m, err := mesh.New(ctx, opts...)
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { m.Close() })
		if wl.Service != "payments" {
			w.Checkout, w.ClientSpans = m, rec
			continue
		}
		version := wl.Labels["version"]
		var serverOpts []grpc.ServerOption
		if wo.PaymentsServer != nil {
			serverOpts = wo.PaymentsServer(wl)
		}
		w.Payments[version] = ServePayments(tb, m, version, serverOpts...)
		w.ServerSpans[version] = rec
	}
	conn, err := w.Checkout.Dial(PaymentsTarget)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { conn.Close() })
	w.Conn = conn
	// Each version serves once its listener has reached the control plane
	// and its endpoint the client; until then calls routed to it fail fast,
	// as Envoy's do with no healthy upstream. A test starts once every
	// version the split sends calls to has answered, not just one of them,
	// and the client knows the endpoint of every other version, so that a
	// test's first shift of weight to it does not race its start.
	for version, weight := range map[string]int{"v1": cfg.V1, "v2": cfg.V2} {
		if weight == 0 {
			if err := waitEndpointKnown(ctx, w.Checkout, version, w.Payments[version].String()); err != nil {
				tb.Fatalf("payments %s never reached the client: %v", version, err)
			}
			continue
		}
		if err := WaitFor(ctx, conn, 1, func(r Reply) bool { return r.Version == version }); err != nil {
			tb.Fatalf("payments %s never answered: %v", version, err)
		}
	}
	return w
}

// waitEndpointKnown waits until m's xDS client has received the endpoints
// of version's subset of payments with addr among them: once they are
// known, a router shifting weight to the subset waits for its connection
// rather than failing calls for want of endpoints.
func waitEndpointKnown(ctx context.Context, m *mesh.Mesh, version, addr string) error {
	known := make(chan struct{})
	var once sync.Once
	cluster := controlplane.ClusterName(PaymentsPort, version, PaymentsHost)
	cancel := m.XDSClient().WatchEndpoints(cluster, func(ev xdsclient.Event[*xdsclient.Endpoints]) {
		if ev.Err != nil || ev.NotFound {
			return
		}
		for _, l := range ev.Resource.Localities {
			for _, e := range l.Endpoints {
				if e.Address == addr {
					once.Do(func() { close(known) })
				}
			}
		}
	})
	defer cancel()
	select {
	case <-known:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("the endpoints of %s never listed %s: %w", cluster, addr, ctx.Err())
	}
}
