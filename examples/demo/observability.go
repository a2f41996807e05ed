package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracegrpc"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"

	"mesh/internal/admin"
	"mesh/xdsclient"
)

// newTracerProvider samples every trace. Spans leave the process only when
// OTEL_EXPORTER_OTLP_ENDPOINT names a collector (the exporter reads that and
// the other OTEL_EXPORTER_OTLP_* variables itself); otherwise the demo makes
// no connection anywhere.
func newTracerProvider(ctx context.Context) (*sdktrace.TracerProvider, error) {
	opts := []sdktrace.TracerProviderOption{sdktrace.WithSampler(sdktrace.AlwaysSample())}
	if os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT") != "" || os.Getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") != "" {
		exporter, err := otlptracegrpc.New(ctx)
		if err != nil {
			return nil, fmt.Errorf("otlp trace exporter: %w", err)
		}
		opts = append(opts, sdktrace.WithBatcher(exporter))
	}
	return sdktrace.NewTracerProvider(opts...), nil
}

// workloadTelemetry is one workload's metrics pipeline and admin server, as
// a separate process would have: its own Prometheus registry, fed by the
// OpenTelemetry SDK through the Prometheus exporter, served with the admin
// pages on 127.0.0.1.
type workloadTelemetry struct {
	name          string
	registry      *prometheus.Registry
	meterProvider *sdkmetric.MeterProvider

	mu     sync.Mutex
	server *http.Server
	addr   string
	wg     sync.WaitGroup
}

func newWorkloadTelemetry(name string) (*workloadTelemetry, error) {
	registry := prometheus.NewRegistry()
	// No scope or target_info labels: the series come out exactly as an
	// Istio sidecar's, so Kiali's and Grafana's queries match them.
	exporter, err := otelprom.New(otelprom.WithRegisterer(registry), otelprom.WithoutScopeInfo(), otelprom.WithoutTargetInfo())
	if err != nil {
		return nil, fmt.Errorf("prometheus exporter for %s: %w", name, err)
	}
	return &workloadTelemetry{
		name:          name,
		registry:      registry,
		meterProvider: sdkmetric.NewMeterProvider(sdkmetric.WithReader(exporter)),
	}, nil
}

// serve starts the workload's admin server on 127.0.0.1:0: /metrics, and
// /debug/config from the workload's xDS client.
func (w *workloadTelemetry) serve(ctx context.Context, xds func() []xdsclient.ResourceStatus, logger *slog.Logger) error {
	lis, err := (&net.ListenConfig{}).Listen(ctx, "tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("admin listener for %s: %w", w.name, err)
	}
	srv := &http.Server{
		Handler: admin.NewHandler(admin.Config{
			Metrics: promhttp.HandlerFor(w.registry, promhttp.HandlerOpts{}),
			XDS:     xds,
			Logger:  logger,
		}),
		ErrorLog: slog.NewLogLogger(logger.Handler(), slog.LevelWarn),
	}
	w.mu.Lock()
	w.server, w.addr = srv, lis.Addr().String()
	w.mu.Unlock()
	w.wg.Go(func() {
		if err := srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			logger.Warn("admin server stopped", "workload", w.name, "error", err)
		}
	})
	return nil
}

// baseURL is the admin server's "http://127.0.0.1:port".
func (w *workloadTelemetry) baseURL() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return "http://" + w.addr
}

func (w *workloadTelemetry) close() {
	w.mu.Lock()
	srv := w.server
	w.mu.Unlock()
	if srv != nil {
		_ = srv.Close()
	}
	w.wg.Wait()
	_ = w.meterProvider.Shutdown(context.Background())
}
