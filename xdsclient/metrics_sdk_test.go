package xdsclient_test

import (
	"context"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
)

// recordingMeterProvider is the OpenTelemetry metrics SDK with a manual
// reader, so a test reads exactly what an exporter would.
type recordingMeterProvider struct {
	*sdkmetric.MeterProvider
	reader *sdkmetric.ManualReader
}

func newRecordingMeterProvider() *recordingMeterProvider {
	reader := sdkmetric.NewManualReader()
	return &recordingMeterProvider{MeterProvider: sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader)), reader: reader}
}

// collect returns every integer metric's value per attribute set.
func (p *recordingMeterProvider) collect(ctx context.Context) map[string]map[attribute.Distinct]int64 {
	var rm metricdata.ResourceMetrics
	if err := p.reader.Collect(ctx, &rm); err != nil {
		panic(err) // only after Shutdown, which the tests do not call
	}
	out := map[string]map[attribute.Distinct]int64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			var points []metricdata.DataPoint[int64]
			switch d := m.Data.(type) {
			case metricdata.Sum[int64]:
				points = d.DataPoints
			case metricdata.Gauge[int64]:
				points = d.DataPoints
			}
			for _, dp := range points {
				if out[m.Name] == nil {
					out[m.Name] = map[attribute.Distinct]int64{}
				}
				out[m.Name][dp.Attributes.Equivalent()] = dp.Value
			}
		}
	}
	return out
}
