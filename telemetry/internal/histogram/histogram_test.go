package histogram

import (
	"context"
	"go.opentelemetry.io/otel/attribute"
	"slices"
	"testing"

	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
)

// TestBucketsAsTheSDKs records values on and around every bound into the
// SDK's explicit-bucket histogram and into Histogram, and requires the same
// bucket counts, count, sum, min and max.
func TestBucketsAsTheSDKs(t *testing.T) {
	if got := len(Histogram[float64]{}.counts); got != len(EnvoyBuckets)+1 {
		t.Fatalf("%d buckets, want %d", got, len(EnvoyBuckets)+1)
	}
	values := []float64{0, 4000000}
	for _, b := range EnvoyBuckets {
		values = append(values, b, b-0.25, b+0.25)
	}
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer mp.Shutdown(context.Background())
	sdkHist, err := mp.Meter("test").Float64Histogram("h", metric.WithExplicitBucketBoundaries(EnvoyBuckets...))
	if err != nil {
		t.Fatal(err)
	}
	var ours Histogram[float64]
	ours.init()
	for _, v := range values {
		sdkHist.Record(context.Background(), v)
		ours.Record(v)
	}
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	want := rm.ScopeMetrics[0].Metrics[0].Data.(metricdata.Histogram[float64]).DataPoints[0]
	got := ours.Snapshot()
	if !slices.Equal(got.Counts, want.BucketCounts) || got.Count != want.Count || got.Sum != want.Sum {
		t.Errorf("counts %v (count %d, sum %v), want the SDK's %v (count %d, sum %v)", got.Counts, got.Count, got.Sum, want.BucketCounts, want.Count, want.Sum)
	}
	if wmin, _ := want.Min.Value(); got.Min != wmin {
		t.Errorf("min %v, want %v", got.Min, wmin)
	}
	if wmax, _ := want.Max.Value(); got.Max != wmax {
		t.Errorf("max %v, want %v", got.Max, wmax)
	}
}

// TestIntegerHistogram checks the int64 instantiation's sum and extremes.
func TestIntegerHistogram(t *testing.T) {
	var h Histogram[int64]
	h.init()
	for _, v := range []int64{7, 1, 1800000, 1800001} {
		h.Record(v)
	}
	s := h.Snapshot()
	if s.Count != 4 || s.Sum != 3600009 || s.Min != 1 || s.Max != 1800001 {
		t.Errorf("snapshot %+v, want count 4, sum 3600009, min 1, max 1800001", s)
	}
	if s.Counts[1] != 1 || s.Counts[3] != 1 || s.Counts[17] != 1 || s.Counts[18] != 1 {
		t.Errorf("bucket counts %v", s.Counts)
	}
}

// TestRecordDoesNotAllocate keeps recording free of allocations.
func TestRecordDoesNotAllocate(t *testing.T) {
	s := New().ForSet(oneLabel())
	if n := testing.AllocsPerRun(100, func() {
		s.Duration.Record(3.5)
		s.RequestBytes.Record(1000)
	}); n != 0 {
		t.Errorf("%v allocations per record, want 0", n)
	}
}

// oneLabel is a small label set.
func oneLabel() attribute.Set { return attribute.NewSet(attribute.String("k", "v")) }
