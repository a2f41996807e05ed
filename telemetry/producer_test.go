package telemetry_test

import (
	"context"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"mesh/internal/testutil"
	"mesh/telemetry"
	"mesh/telemetry/otelsdk"
)

// TestProducerScrapesLikeTheSDK records the same calls twice, once through
// the SDK's own histograms and once through otelsdk's producer, each
// scraped by the real OpenTelemetry Prometheus exporter, and requires the
// two scrapes to be the same text: names, help, types, units, scope
// labels, Istio's labels, Envoy's buckets and values.
func TestProducerScrapesLikeTheSDK(t *testing.T) {
	ctx := testutil.Context(t)
	scrape := func(withProducer bool) string {
		registry := prometheus.NewRegistry()
		promOpts := []otelprom.Option{otelprom.WithRegisterer(registry), otelprom.WithoutTargetInfo()}
		var producer *otelsdk.Producer
		if withProducer {
			producer = otelsdk.NewProducer()
			promOpts = append(promOpts, otelprom.WithProducer(producer))
		}
		exporter, err := otelprom.New(promOpts...)
		if err != nil {
			t.Fatalf("prometheus exporter: %v", err)
		}
		sdk := sdkmetric.NewMeterProvider(sdkmetric.WithReader(exporter))
		t.Cleanup(func() { _ = sdk.Shutdown(context.Background()) })
		var mp metric.MeterProvider = sdk
		if withProducer {
			mp = producer.MeterProvider(sdk)
		}
		// A clock that stands still makes durations exact (zero).
		clock := telemetry.WithClock(func() time.Time { return time.Unix(1700000000, 0) })
		p := startPair(t, pairConfig{
			interceptors: true,
			clientOpts:   []telemetry.GRPCOption{clock, telemetry.WithMeterProvider(mp), telemetry.WithWorkload(checkout), telemetry.WithService(paymentsHost)},
			serverOpts:   []telemetry.GRPCOption{clock, telemetry.WithMeterProvider(mp), telemetry.WithWorkload(payments)},
		})
		for _, service := range []string{"", "", "missing"} {
			_, _ = p.client.Check(ctx, &healthpb.HealthCheckRequest{Service: service})
		}
		waitN(ctx, t, "client", p.clientEnds, 3)
		waitN(ctx, t, "server", p.serverEnds, 3)
		srv := httptest.NewServer(telemetry.EnvoyBucketLabels(promhttp.HandlerFor(registry, promhttp.HandlerOpts{})))
		defer srv.Close()
		return scrapeRaw(ctx, t, srv)
	}
	sdkText, producerText := scrape(false), scrape(true)
	if sdkText != producerText {
		t.Errorf("scrapes differ:\n%s", lineDiff(sdkText, producerText))
	}
	for _, name := range []string{telemetry.MetricRequestDuration, telemetry.MetricRequestBytes, telemetry.MetricResponseBytes} {
		if !strings.Contains(producerText, "# TYPE "+name+" histogram") {
			t.Errorf("producer's scrape lacks histogram %s:\n%s", name, producerText)
		}
	}
}

// lineDiff lists the lines only one of a and b has.
func lineDiff(a, b string) string {
	count := map[string]int{}
	for _, l := range strings.Split(a, "\n") {
		count[l]++
	}
	for _, l := range strings.Split(b, "\n") {
		count[l]--
	}
	var out []string
	for l, n := range count {
		switch {
		case n > 0:
			out = append(out, "- "+l)
		case n < 0:
			out = append(out, "+ "+l)
		}
	}
	return strings.Join(out, "\n")
}

// TestProducerKeepsExemplars: a sampled call's histogram points carry its
// span as an exemplar, as the SDK's trace-based exemplar filter gives
// them; an unsampled call's carry none.
func TestProducerKeepsExemplars(t *testing.T) {
	ctx := testutil.Context(t)
	for _, sampled := range []bool{true, false} {
		sampler := sdktrace.NeverSample()
		if sampled {
			sampler = sdktrace.AlwaysSample()
		}
		tp, spans := newRecordingProvider(t, sampler)
		producer := otelsdk.NewProducer()
		reader := sdkmetric.NewManualReader(sdkmetric.WithProducer(producer))
		sdk := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
		t.Cleanup(func() { _ = sdk.Shutdown(context.Background()) })
		opts := []telemetry.GRPCOption{telemetry.WithMeterProvider(producer.MeterProvider(sdk)), telemetry.WithTracerProvider(tp)}
		p := startPair(t, pairConfig{interceptors: true, clientOpts: append(opts, telemetry.WithWorkload(checkout)), serverOpts: append(opts, telemetry.WithWorkload(payments))})
		if _, err := p.client.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
			t.Fatalf("check: %v", err)
		}
		waitN(ctx, t, "client", p.clientEnds, 1)
		waitN(ctx, t, "server", p.serverEnds, 1)
		traceIDs := map[string]bool{}
		for _, s := range spans.Ended() {
			traceIDs[s.SpanContext().TraceID().String()] = true
		}
		var rm metricdata.ResourceMetrics
		if err := reader.Collect(ctx, &rm); err != nil {
			t.Fatal(err)
		}
		var points int
		for _, sm := range rm.ScopeMetrics {
			for _, m := range sm.Metrics {
				h, ok := m.Data.(metricdata.Histogram[float64])
				if !ok || m.Name != telemetry.MetricRequestDuration {
					continue
				}
				for _, dp := range h.DataPoints {
					points++
					if !sampled {
						if len(dp.Exemplars) != 0 {
							t.Errorf("unsampled call: exemplars %v", dp.Exemplars)
						}
						continue
					}
					if len(dp.Exemplars) != 1 || !traceIDs[trace.TraceID(dp.Exemplars[0].TraceID).String()] || dp.Exemplars[0].Value != dp.Sum {
						t.Errorf("sampled call: exemplars %+v, want one of trace %v with the call's duration %v", dp.Exemplars, traceIDs, dp.Sum)
					}
				}
			}
		}
		if points != 2 {
			t.Errorf("sampled %v: %d duration points, want 2 (both reporters)", sampled, points)
		}
	}
}
