package telemetry_test

import (
	"context"
	"io"
	"maps"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"mesh/internal/testutil"
	"mesh/telemetry"
)

// TestPrometheusNamesAreIstios scrapes the real OpenTelemetry Prometheus
// exporter through promhttp and checks that metric names, types, labels and
// buckets are exactly those Istio's dashboards query.
func TestPrometheusNamesAreIstios(t *testing.T) {
	ctx := testutil.Context(t)
	registry := prometheus.NewRegistry()
	exporter, err := otelprom.New(otelprom.WithRegisterer(registry), otelprom.WithoutScopeInfo(), otelprom.WithoutTargetInfo())
	if err != nil {
		t.Fatalf("prometheus exporter: %v", err)
	}
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(exporter))
	t.Cleanup(func() { _ = mp.Shutdown(context.Background()) })

	// One gRPC call, reported by both sides.
	p := startPair(t, pairConfig{
		clientOpts: []telemetry.GRPCOption{telemetry.WithMeterProvider(mp), telemetry.WithWorkload(checkout), telemetry.WithService(paymentsHost)},
		serverOpts: []telemetry.GRPCOption{telemetry.WithMeterProvider(mp), telemetry.WithWorkload(payments)},
	})
	if _, err := p.client.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("check: %v", err)
	}
	waitN(ctx, t, "client", p.clientEnds, 1)
	waitN(ctx, t, "server", p.serverEnds, 1)
	// One HTTP call, reported by the server side.
	app := httptest.NewServer(telemetry.Middleware(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "ok")
	}), telemetry.WithMeterProvider(mp), telemetry.WithWorkload(payments)))
	t.Cleanup(app.Close)
	resp, err := app.Client().Get(app.URL)
	if err != nil {
		t.Fatalf("get: %v", err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()

	scrape := httptest.NewServer(telemetry.EnvoyBucketLabels(promhttp.HandlerFor(registry, promhttp.HandlerOpts{})))
	t.Cleanup(scrape.Close)
	// The HTTP server records just after its handler returns: scrape until
	// all three requests show.
	var families map[string]*dto.MetricFamily
	for len(families["istio_requests_total"].GetMetric()) < 3 {
		select {
		case <-ctx.Done():
			t.Fatalf("scraped %v: %v", families["istio_requests_total"], ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
		families = scrapeText(ctx, t, scrape)
	}

	want := map[string]dto.MetricType{
		"istio_requests_total":                dto.MetricType_COUNTER,
		"istio_request_duration_milliseconds": dto.MetricType_HISTOGRAM,
		"istio_request_bytes":                 dto.MetricType_HISTOGRAM,
		"istio_response_bytes":                dto.MetricType_HISTOGRAM,
		"istio_request_messages_total":        dto.MetricType_COUNTER,
		"istio_response_messages_total":       dto.MetricType_COUNTER,
	}
	if got := slices.Sorted(maps.Keys(families)); !slices.Equal(got, slices.Sorted(maps.Keys(want))) {
		t.Fatalf("scraped families %v, want exactly %v", got, slices.Sorted(maps.Keys(want)))
	}
	wantNames := slices.Sorted(slices.Values(istioLabelNames))
	for name, typ := range want {
		f := families[name]
		if f.GetType() != typ {
			t.Errorf("%s: type %v, want %v", name, f.GetType(), typ)
		}
		// gRPC source, gRPC destination, HTTP destination; message counts
		// are gRPC's only.
		grpcOnly := strings.HasSuffix(name, "_messages_total")
		if n := len(f.GetMetric()); n != 3 && !(grpcOnly && n == 2) {
			t.Errorf("%s: %d series, want 3 (2 for message counts)", name, n)
		}
		reporters := map[string]int{}
		for _, m := range f.GetMetric() {
			labels := map[string]string{}
			for _, lp := range m.GetLabel() {
				labels[lp.GetName()] = lp.GetValue()
			}
			if got := slices.Sorted(maps.Keys(labels)); !slices.Equal(got, wantNames) {
				t.Errorf("%s: labels %v, want exactly Istio's %v", name, got, wantNames)
			}
			reporters[labels["reporter"]+"/"+labels["request_protocol"]]++
			if typ == dto.MetricType_COUNTER && m.GetCounter().GetValue() != 1 {
				t.Errorf("%s%v = %v, want 1", name, labels, m.GetCounter().GetValue())
			}
		}
		if reporters["source/grpc"] != 1 || reporters["destination/grpc"] != 1 || reporters["destination/http"] != 1 && !grpcOnly {
			t.Errorf("%s: series by reporter/protocol %v, want one each of source/grpc, destination/grpc, destination/http", name, reporters)
		}
	}

	// Every histogram has Envoy's buckets, and its le labels read as
	// Envoy prints them.
	wantLes := []string{"0.5", "1", "5", "10", "25", "50", "100", "250", "500", "1000", "2500", "5000", "10000", "30000", "60000", "300000", "600000", "1800000", "3600000", "+Inf"}
	text := scrapeRaw(ctx, t, scrape)
	for _, name := range []string{"istio_request_duration_milliseconds", "istio_request_bytes", "istio_response_bytes"} {
		var les []string
		for _, line := range strings.Split(text, "\n") {
			if !strings.HasPrefix(line, name+"_bucket{") || !strings.Contains(line, `reporter="destination"`) || !strings.Contains(line, `request_protocol="http"`) {
				continue
			}
			_, le, _ := strings.Cut(line, `le="`)
			le, _, _ = strings.Cut(le, `"`)
			les = append(les, le)
		}
		if !slices.Equal(les, wantLes) {
			t.Errorf("%s: le labels %v, want Envoy's %v", name, les, wantLes)
		}
	}
}

func scrapeRaw(ctx context.Context, t *testing.T, scrape *httptest.Server) string {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, scrape.URL, nil)
	if err != nil {
		t.Fatalf("request: %v", err)
	}
	req.Header.Set("Accept", "text/plain;version=0.0.4")
	req.Header.Set("Accept-Encoding", "gzip")             // as Prometheus asks
	resp, err := scrape.Client().Transport.RoundTrip(req) // no transparent gunzip
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	defer resp.Body.Close()
	if ce := resp.Header.Get("Content-Encoding"); ce != "" {
		t.Fatalf("scrape answered with Content-Encoding %q, want the rewritten text", ce)
	}
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	return string(body)
}

func scrapeText(ctx context.Context, t *testing.T, scrape *httptest.Server) map[string]*dto.MetricFamily {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, scrape.URL, nil)
	if err != nil {
		t.Fatalf("request: %v", err)
	}
	req.Header.Set("Accept", "text/plain;version=0.0.4")
	resp, err := scrape.Client().Do(req)
	if err != nil {
		t.Fatalf("scrape: %v", err)
	}
	defer resp.Body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse scrape: %v", err)
	}
	return families
}
