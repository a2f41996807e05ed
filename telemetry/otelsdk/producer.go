package otelsdk

import (
	"context"
	"time"

	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/embedded"
	"go.opentelemetry.io/otel/sdk/instrumentation"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"

	"mesh/telemetry"
	"mesh/telemetry/internal/histogram"
)

// scopeName is the instrumentation scope telemetry's meter is named after.
const scopeName = "mesh/telemetry"

// Producer is a metric producer (go.opentelemetry.io/otel/sdk/metric's
// Producer interface) of Istio's histograms: request duration, request
// size and response size, for every handler given a meter provider from
// its MeterProvider method.
//
// # Experimental
//
// The way a meter provider is marked may change, for instance should the
// OpenTelemetry API gain observable histograms.
type Producer struct {
	agg *histogram.Aggregator
}

// NewProducer returns a producer with no series yet.
func NewProducer() *Producer { return &Producer{agg: histogram.New()} }

// MeterProvider returns mp, marked so that mesh's telemetry records its
// histograms into p instead of creating them in mp. Everything else (the
// counters, other users' instruments) goes to mp unchanged.
func (p *Producer) MeterProvider(mp metric.MeterProvider) metric.MeterProvider {
	return &meterProvider{mp: mp, agg: p.agg}
}

type meterProvider struct {
	embedded.MeterProvider
	mp  metric.MeterProvider
	agg *histogram.Aggregator
}

func (m *meterProvider) Meter(name string, opts ...metric.MeterOption) metric.Meter {
	return m.mp.Meter(name, opts...)
}

// MeshHistograms is how telemetry finds the aggregator.
func (m *meterProvider) MeshHistograms() *histogram.Aggregator { return m.agg }

// Produce returns the histograms' cumulative state. It is safe to call
// concurrently with recording and with itself.
func (p *Producer) Produce(context.Context) ([]metricdata.ScopeMetrics, error) {
	series := p.agg.All()
	if len(series) == 0 {
		return nil, nil
	}
	now := time.Now()
	var duration []metricdata.HistogramDataPoint[float64]
	var reqBytes, respBytes []metricdata.HistogramDataPoint[int64]
	for _, s := range series {
		if dp, ok := dataPoint(s, &s.Duration, now); ok {
			duration = append(duration, dp)
		}
		if dp, ok := dataPoint(s, &s.RequestBytes, now); ok {
			reqBytes = append(reqBytes, dp)
		}
		if dp, ok := dataPoint(s, &s.ResponseBytes, now); ok {
			respBytes = append(respBytes, dp)
		}
	}
	var metrics []metricdata.Metrics
	if len(duration) > 0 {
		metrics = append(metrics, metricdata.Metrics{
			Name: telemetry.MetricRequestDuration, Description: histogram.DurationDescription, Unit: histogram.DurationUnit,
			Data: metricdata.Histogram[float64]{DataPoints: duration, Temporality: metricdata.CumulativeTemporality},
		})
	}
	if len(reqBytes) > 0 {
		metrics = append(metrics, metricdata.Metrics{
			Name: telemetry.MetricRequestBytes, Description: histogram.RequestBytesDescription, Unit: histogram.BytesUnit,
			Data: metricdata.Histogram[int64]{DataPoints: reqBytes, Temporality: metricdata.CumulativeTemporality},
		})
	}
	if len(respBytes) > 0 {
		metrics = append(metrics, metricdata.Metrics{
			Name: telemetry.MetricResponseBytes, Description: histogram.ResponseBytesDescription, Unit: histogram.BytesUnit,
			Data: metricdata.Histogram[int64]{DataPoints: respBytes, Temporality: metricdata.CumulativeTemporality},
		})
	}
	if len(metrics) == 0 {
		return nil, nil
	}
	return []metricdata.ScopeMetrics{{Scope: instrumentation.Scope{Name: scopeName}, Metrics: metrics}}, nil
}

// dataPoint reads one histogram of s; a series created but not yet
// recorded into has none.
func dataPoint[N int64 | float64](s *histogram.Series, h *histogram.Histogram[N], now time.Time) (metricdata.HistogramDataPoint[N], bool) {
	snap := h.Snapshot()
	if snap.Count == 0 {
		return metricdata.HistogramDataPoint[N]{}, false
	}
	return metricdata.HistogramDataPoint[N]{
		Attributes:   s.Attributes,
		StartTime:    s.Start,
		Time:         now,
		Count:        snap.Count,
		Bounds:       histogram.EnvoyBuckets,
		BucketCounts: snap.Counts,
		Min:          metricdata.NewExtrema(snap.Min),
		Max:          metricdata.NewExtrema(snap.Max),
		Sum:          snap.Sum,
		Exemplars:    exemplars(snap.Exemplars),
	}, true
}

func exemplars[N int64 | float64](in []*histogram.Exemplar[N]) []metricdata.Exemplar[N] {
	if len(in) == 0 {
		return nil
	}
	out := make([]metricdata.Exemplar[N], len(in))
	for i, e := range in {
		out[i] = metricdata.Exemplar[N]{Time: e.Time, Value: e.Value, TraceID: e.TraceID[:], SpanID: e.SpanID[:]}
	}
	return out
}
