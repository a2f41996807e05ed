package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"

	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"

	"mesh"
	"mesh/controlplane"
	"mesh/internal/shop"
)

// world is the running example mesh: the control plane, payments v1 and v2
// serving, and checkout with a channel to payments. Every workload serves
// its metrics and admin pages, registered with the control plane for the
// whole-mesh graph.
type world struct {
	cp           *controlplane.Server
	paymentsAddr map[string]string // version -> serving address
	telemetry    map[string]*workloadTelemetry
	checkout     *grpc.ClientConn
	closers      []func()
}

// startWorld starts the mesh with the 90/10 split applied. On error it
// stops what it started.
func startWorld(ctx context.Context, logger *slog.Logger, tp trace.TracerProvider) (w *world, err error) {
	w = &world{paymentsAddr: map[string]string{}, telemetry: map[string]*workloadTelemetry{}}
	defer func() {
		if err != nil {
			w.close()
			w = nil
		}
	}()
	cp, err := controlplane.New(ctx, controlplane.WithLogger(logger))
	if err != nil {
		return nil, err
	}
	w.cp = cp
	w.onClose(func() { _ = cp.Close() })

	dir, err := os.MkdirTemp("", "mesh-demo-")
	if err != nil {
		return nil, err
	}
	w.onClose(func() { _ = os.RemoveAll(dir) })
	bootstraps := map[string]string{}
	for _, wl := range shop.Workloads() {
		path, err := cp.WriteBootstrap(filepath.Join(dir, wl.Name), wl)
		if err != nil {
			return nil, fmt.Errorf("bootstrap for %s: %w", wl.Name, err)
		}
		bootstraps[wl.Name] = path
	}
	if err := cp.Apply(shop.MeshYAML(90, 10)); err != nil {
		return nil, err
	}

	join := func(name string) (*mesh.Mesh, error) {
		wt, err := newWorkloadTelemetry(name)
		if err != nil {
			return nil, err
		}
		w.onClose(wt.close)
		w.telemetry[name] = wt
		m, err := mesh.New(ctx, mesh.WithBootstrapFile(bootstraps[name]), mesh.WithLogger(logger.With("workload", name)),
			mesh.WithTracerProvider(tp), mesh.WithMeterProvider(wt.meterProvider))
		if err != nil {
			return nil, err
		}
		w.onClose(func() { _ = m.Close() })
		if err := wt.serve(ctx, m.XDSClient().Dump, logger.With("workload", name)); err != nil {
			return nil, err
		}
		if err := cp.RegisterMetricsEndpoint(name, wt.baseURL()+"/metrics"); err != nil {
			return nil, err
		}
		return m, nil
	}
	for _, version := range []string{"v1", "v2"} {
		m, err := join("payments-" + version)
		if err != nil {
			return nil, err
		}
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		srv := m.NewGRPCServer()
		(&shop.Payments{Version: version}).Register(srv)
		registerFaults(srv)
		go srv.Serve(lis)
		w.onClose(srv.Stop)
		w.paymentsAddr[version] = lis.Addr().String()
	}

	checkout, err := join("checkout")
	if err != nil {
		return nil, err
	}
	conn, err := checkout.Dial(shop.PaymentsTarget)
	if err != nil {
		return nil, err
	}
	w.checkout = conn
	w.onClose(func() { _ = conn.Close() })
	return w, nil
}

// onClose registers f to run at close, in reverse order of registration.
func (w *world) onClose(f func()) { w.closers = append(w.closers, f) }

func (w *world) close() {
	for _, f := range slices.Backward(w.closers) {
		f()
	}
	w.closers = nil
}

// metricsURLs lists every workload's /metrics URL, by workload.
func (w *world) metricsURLs() map[string]string { return w.cp.MetricsEndpoints() }
