// Package otelsdk hands Istio's histograms, as mesh aggregates them, to an
// OpenTelemetry SDK reader: a metric producer, so mesh's telemetry records
// each histogram measurement with a few atomic operations instead of the
// SDK's synchronous path, which walks all 25 of Istio's labels on every
// measurement.
//
//	p := otelsdk.NewProducer()
//	exporter, _ := otelprom.New(otelprom.WithProducer(p)) // or sdkmetric.NewManualReader(sdkmetric.WithProducer(p))
//	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(exporter))
//	m, _ := mesh.New(ctx, mesh.WithMeterProvider(p.MeterProvider(mp)))
//
// What a reader sees is what the SDK's own histograms would give it: the
// same names, descriptions, units, instrumentation scope, labels and
// Envoy's buckets. The histograms are always cumulative, whatever
// temporality the reader prefers (Prometheus wants cumulative; an OTLP
// exporter preferring delta gets cumulative histograms). Exemplars come
// from sampled calls, as with the SDK's default trace-based filter: each
// bucket keeps its latest (the SDK samples among a bucket's measurements
// instead). Give the meter provider from MeterProvider to mesh (or to
// telemetry.WithMeterProvider) and the producer to the reader: a provider
// wrapped without the producer on a reader loses the histograms, and the
// producer without the wrapped provider reports none.
//
// This package imports the SDK; telemetry itself depends on the
// OpenTelemetry API only.
package otelsdk
