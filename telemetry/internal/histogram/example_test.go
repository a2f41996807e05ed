package histogram_test

import (
	"fmt"

	"go.opentelemetry.io/otel/attribute"

	"mesh/telemetry/internal/histogram"
)

// One label set's series, found again by the same set, recorded into
// without a lock and read back.
func Example() {
	agg := histogram.New()
	set := attribute.NewSet(attribute.String("response_code", "200"))
	s := agg.ForSet(set)
	for _, ms := range []float64{0.4, 3, 12} {
		s.Duration.Record(ms)
	}
	snap := agg.ForSet(attribute.NewSet(attribute.String("response_code", "200"))).Duration.Snapshot()
	fmt.Println(len(agg.All()), snap.Count, snap.Sum, snap.Min, snap.Max)
	// Output: 1 3 15.4 0.4 12
}
