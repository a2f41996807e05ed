package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"

	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"

	"mesh"
	"mesh/admin"
	"mesh/controlplane"
	"mesh/examples/shop"
)

// world is the running example mesh: the control plane, payments v1 and v2
// serving gRPC, web v1 and v2 serving net/http, and checkout with a
// channel to payments and an HTTP client for web. Every workload serves
// /metrics and its admin pages through admin.Serve, registered with the
// control plane for the whole-mesh graph.
type world struct {
	cp           *controlplane.Server
	paymentsAddr map[string]string // version -> serving address
	webAddr      map[string]string // version -> serving address
	admin        map[string]string // workload -> admin base URL
	checkout     *grpc.ClientConn
	web          *http.Client // checkout's mesh HTTP client
	closers      []func()
}

// startWorld starts the mesh with payments split 90/10 and web 50/50. On
// error it stops what it started.
func startWorld(ctx context.Context, logger *slog.Logger, tp trace.TracerProvider) (w *world, err error) {
	w = &world{paymentsAddr: map[string]string{}, webAddr: map[string]string{}, admin: map[string]string{}}
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
	for _, wl := range append(shop.Workloads(), shop.WebWorkloads()...) {
		path, err := cp.WriteBootstrap(filepath.Join(dir, wl.Name), wl)
		if err != nil {
			return nil, fmt.Errorf("bootstrap for %s: %w", wl.Name, err)
		}
		bootstraps[wl.Name] = path
	}
	if err := cp.Apply(append(shop.MeshYAML(90, 10), append([]byte("---\n"), shop.WebYAML(50, 50)...)...)); err != nil {
		return nil, err
	}

	// join makes a workload's mesh, with its metrics and admin pages on
	// 127.0.0.1, as a separate process would have them.
	join := func(name string) (*mesh.Mesh, error) {
		mp, metrics, err := shop.Metrics()
		if err != nil {
			return nil, err
		}
		w.onClose(func() { _ = mp.Shutdown(context.Background()) })
		m, err := mesh.New(ctx, mesh.WithBootstrapFile(bootstraps[name]), mesh.WithLogger(logger.With("workload", name)),
			mesh.WithTracerProvider(tp), mesh.WithMeterProvider(mp))
		if err != nil {
			return nil, err
		}
		w.onClose(func() { _ = m.Close() })
		srv, err := admin.Serve(m, "127.0.0.1:0", metrics)
		if err != nil {
			return nil, err
		}
		w.onClose(func() { _ = srv.Close() }) // before the mesh: closers run last first
		w.admin[name] = "http://" + srv.Addr()
		if err := cp.RegisterMetricsEndpoint(name, w.admin[name]+"/metrics"); err != nil {
			return nil, err
		}
		return m, nil
	}
	// serve joins workload name, runs serve on a new 127.0.0.1 listener
	// until close, then stop, and returns the listener's address.
	serve := func(name string, start func(m *mesh.Mesh) (serve func(net.Listener) error, stop func())) (string, error) {
		m, err := join(name)
		if err != nil {
			return "", err
		}
		lis, err := (&net.ListenConfig{}).Listen(ctx, "tcp", "127.0.0.1:0")
		if err != nil {
			return "", err
		}
		run, stop := start(m)
		served := make(chan struct{})
		go func() {
			defer close(served)
			if err := run(lis); err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, grpc.ErrServerStopped) {
				logger.Warn("server stopped", "workload", name, "error", err)
			}
		}()
		w.onClose(func() {
			stop()
			<-served
		})
		return lis.Addr().String(), nil
	}
	for _, version := range []string{"v1", "v2"} {
		w.paymentsAddr[version], err = serve("payments-"+version, func(m *mesh.Mesh) (func(net.Listener) error, func()) {
			srv := m.NewGRPCServer()
			(&shop.Payments{Version: version}).Register(srv)
			registerFaults(srv)
			return srv.Serve, srv.Stop
		})
		if err != nil {
			return nil, err
		}
		w.webAddr[version], err = serve("web-"+version, func(m *mesh.Mesh) (func(net.Listener) error, func()) {
			srv := m.NewHTTPServer(shop.Web(version))
			return srv.Serve, func() { _ = srv.Close() }
		})
		if err != nil {
			return nil, err
		}
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
	w.web = checkout.HTTPClient()
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
