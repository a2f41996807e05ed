package controlplane

import (
	"strings"
	"testing"

	"mesh/internal/admin"
)

// TestSumSeriesCountsTheInfBucketOnce: the text format lists the +Inf
// bucket; counted again from the sample count, every p99 came out beyond
// the last bound ("slow") and a canary's p99 threshold always breached.
func TestSumSeriesCountsTheInfBucketOnce(t *testing.T) {
	const l = `reporter="destination",source_workload_namespace="default",source_canonical_service="checkout",source_canonical_revision="v1",destination_service_namespace="default",destination_canonical_service="payments",destination_canonical_revision="v2"`
	fams, err := admin.ParseMetrics(strings.NewReader("# TYPE istio_request_duration_milliseconds histogram\n" +
		"istio_request_duration_milliseconds_bucket{" + l + `,le="5"} 99` + "\n" +
		"istio_request_duration_milliseconds_bucket{" + l + `,le="50"} 100` + "\n" +
		"istio_request_duration_milliseconds_bucket{" + l + `,le="+Inf"} 100` + "\n" +
		"istio_request_duration_milliseconds_sum{" + l + "} 300\n" +
		"istio_request_duration_milliseconds_count{" + l + "} 100\n"))
	if err != nil {
		t.Fatal(err)
	}
	edges := sumSeries(fams, edgeID)
	e, ok := edges["default/checkout/v1->default/payments/v2"]
	if !ok {
		t.Fatalf("edges %v", edges)
	}
	if p99, p50 := quantileBound(e.buckets, 0.99), quantileBound(e.buckets, 0.5); p99 != 5 || p50 != 5 {
		t.Errorf("p99 %v, p50 %v; want 5 and 5 (99 of 100 calls within 5 ms)", p99, p50)
	}
}
