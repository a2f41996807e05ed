package shop

import (
	"fmt"
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
)

// Metrics is all a service needs for Istio's metrics on /metrics: a
// MeterProvider for mesh.WithMeterProvider, and the handler that serves what
// it measured in Prometheus's text format, for mesh.WithAdmin. Shut the
// provider down when done.
//
//	mp, metrics, err := shop.Metrics()
//	m, err := mesh.New(ctx, mesh.WithMeterProvider(mp), mesh.WithAdmin("127.0.0.1:15000", metrics))
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
