package otelsdk_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"mesh/telemetry"
	"mesh/telemetry/otelsdk"
)

// ExampleProducer wires the producer into a reader and its meter provider
// into telemetry: the histograms come out of the reader as the SDK's own
// would.
func ExampleProducer() {
	p := otelsdk.NewProducer()
	reader := sdkmetric.NewManualReader(sdkmetric.WithProducer(p))
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer mp.Shutdown(context.Background())

	handler := telemetry.Middleware(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "ok")
	}), telemetry.WithMeterProvider(p.MeterProvider(mp)))
	rec := httptest.NewRecorder()
	handler.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "http://payments/", nil))

	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		fmt.Println(err)
		return
	}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if h, ok := m.Data.(metricdata.Histogram[int64]); ok {
				fmt.Println(sm.Scope.Name, m.Name, h.DataPoints[0].Count)
			}
		}
	}
	// Output:
	// mesh/telemetry istio_request_bytes 1
	// mesh/telemetry istio_response_bytes 1
}
