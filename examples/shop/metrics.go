package shop

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"

	"mesh"
	"mesh/admin"
)

// Metrics is all a service needs for Istio's metrics on /metrics: a
// MeterProvider for mesh.WithMeterProvider, and the handler that serves what
// it measured in Prometheus's text format, for admin.Serve. Shut the
// provider down when done.
//
//	mp, metrics, err := shop.Metrics()
//	m, err := mesh.New(ctx, mesh.WithMeterProvider(mp))
//	srv, err := admin.Serve(m, "127.0.0.1:15000", metrics)
func Metrics() (*sdkmetric.MeterProvider, http.Handler, error) {
	registry := prometheus.NewRegistry()
	// No scope or target_info labels: the series come out exactly as an
	// Istio sidecar's, so Kiali's and Grafana's queries match them.
	exporter, err := otelprom.New(otelprom.WithRegisterer(registry), otelprom.WithoutScopeInfo(), otelprom.WithoutTargetInfo())
	if err != nil {
		return nil, nil, fmt.Errorf("prometheus exporter: %w", err)
	}
	return sdkmetric.NewMeterProvider(sdkmetric.WithReader(exporter)), promhttp.HandlerFor(registry, promhttp.HandlerOpts{}), nil
}

// Join makes the process's mesh from MESH_BOOTSTRAP (or the gRPC
// variables), logging to stderr. With adminAddr set, it also serves Istio's
// metrics on /metrics and the mesh's admin pages there; the metrics are
// pulled, so nothing is left to flush. leave closes the admin pages, then
// the mesh.
func Join(ctx context.Context, adminAddr string, opts ...mesh.Option) (m *mesh.Mesh, leave func(), err error) {
	opts = append([]mesh.Option{mesh.WithLogger(slog.Default())}, opts...)
	var mp *sdkmetric.MeterProvider
	var metrics http.Handler
	if adminAddr != "" {
		if mp, metrics, err = Metrics(); err != nil {
			return nil, nil, err
		}
		opts = append(opts, mesh.WithMeterProvider(mp))
	}
	shutdown := func() {
		if mp != nil {
			_ = mp.Shutdown(context.Background())
		}
	}
	if m, err = mesh.New(ctx, opts...); err != nil {
		shutdown()
		return nil, nil, err
	}
	if adminAddr == "" {
		return m, func() { _ = m.Close() }, nil
	}
	srv, err := admin.Serve(m, adminAddr, metrics)
	if err != nil {
		_ = m.Close()
		shutdown()
		return nil, nil, err
	}
	slog.Info("admin pages and /metrics", "url", "http://"+srv.Addr()+"/")
	return m, func() { _ = srv.Close(); _ = m.Close(); shutdown() }, nil
}
