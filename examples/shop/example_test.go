package shop_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"

	"mesh/examples/shop"
)

// A Tally counts which version answered each call.
func ExampleTally() {
	var t shop.Tally
	for range 9 {
		t.Add(shop.Reply{Version: "v1"}, nil)
	}
	t.Add(shop.Reply{Version: "v2"}, nil)
	t.Add(shop.Reply{}, errors.New("unavailable"))
	fmt.Println(t.String())
	// Output: v1 9 (81.8%)  v2 1 (9.1%)  failed 1
}

// Metrics gives the MeterProvider for mesh.WithMeterProvider and the
// handler for admin.Serve; what the provider measures, the handler
// serves in Prometheus's text format.
func ExampleMetrics() {
	mp, metrics, err := shop.Metrics()
	if err != nil {
		fmt.Println(err)
		return
	}
	defer mp.Shutdown(context.Background())
	counter, _ := mp.Meter("example").Int64Counter("charges")
	counter.Add(context.Background(), 3)

	rec := httptest.NewRecorder()
	metrics.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/metrics", nil))
	for _, line := range strings.Split(rec.Body.String(), "\n") {
		if strings.HasPrefix(line, "charges_total") {
			fmt.Println(line)
		}
	}
	// Output: charges_total 3
}
