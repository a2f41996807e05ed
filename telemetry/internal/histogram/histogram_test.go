package histogram

import (
	"context"
	"go.opentelemetry.io/otel/attribute"
	"slices"
	"sync"
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

// TestConcurrentRecording records from several goroutines while another
// reads: no measurement is lost, and (under -race) no access races.
func TestConcurrentRecording(t *testing.T) {
	a := New()
	s := a.ForSet(oneLabel())
	const writers, each = 4, 1000
	var wg sync.WaitGroup
	done := make(chan struct{})
	go func() {
		defer close(done)
		for range 100 {
			for _, s := range a.All() {
				_ = s.RequestBytes.Snapshot()
			}
		}
	}()
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range each {
				s.RequestBytes.Record(int64(w*each + i))
			}
		}()
	}
	wg.Wait()
	<-done
	got := s.RequestBytes.Snapshot()
	const n = writers * each
	if got.Count != n || got.Sum != n*(n-1)/2 || got.Min != 0 || got.Max != n-1 {
		t.Errorf("snapshot count %d sum %d min %d max %d, want %d, %d, 0, %d", got.Count, got.Sum, got.Min, got.Max, n, n*(n-1)/2, n-1)
	}
}

// TestSeriesAreBounded: past maxSeries label sets, measurements go to one
// overflow series, as the SDK's cardinality limit does.
func TestSeriesAreBounded(t *testing.T) {
	a := New()
	for i := range maxSeries {
		a.ForSet(attribute.NewSet(attribute.Int("i", i)))
	}
	over := a.ForSet(attribute.NewSet(attribute.Int("i", -1)))
	if over != a.ForSet(attribute.NewSet(attribute.Int("i", -2))) {
		t.Error("two label sets past the limit got different series")
	}
	if v, ok := over.Attributes.Value("otel.metric.overflow"); !ok || !v.AsBool() {
		t.Errorf("overflow series labelled %v", over.Attributes)
	}
	if n := len(a.All()); n != maxSeries+1 {
		t.Errorf("%d series, want %d", n, maxSeries+1)
	}
}
