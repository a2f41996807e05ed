package controlplane_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log"
	"net/http"
	"net/http/httptest"
	"sync/atomic"

	"mesh/controlplane"
	"mesh/internal/admin"
)

// ExampleServer_ServeAdmin serves the whole mesh's service graph, scraped
// from the /metrics endpoint each workload registered.
func ExampleServer_ServeAdmin() {
	ctx := context.Background()
	cp, err := controlplane.New(ctx)
	if err != nil {
		log.Fatal(err)
	}
	defer cp.Close()

	// A workload's metrics, as the OpenTelemetry Prometheus exporter
	// serves them: 7 more calls each time they are scraped.
	var calls atomic.Int64
	checkout := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintf(w, `istio_requests_total{reporter="source",source_workload_namespace="default",source_canonical_service="checkout",source_canonical_revision="v1",destination_service_namespace="default",destination_canonical_service="payments",destination_canonical_revision="v1",request_protocol="grpc",grpc_response_status="0"} %d`+"\n", calls.Add(7))
	}))
	defer checkout.Close()
	if err := cp.RegisterMetricsEndpoint("checkout", checkout.URL+"/metrics"); err != nil {
		log.Fatal(err)
	}

	base, err := cp.ServeAdmin(ctx, "127.0.0.1:0") // open base+"/debug/graph" in a browser
	if err != nil {
		log.Fatal(err)
	}
	resp, err := http.Get(base + "/debug/graph.json")
	if err != nil {
		log.Fatal(err)
	}
	defer resp.Body.Close()
	var g admin.Graph
	if err := json.NewDecoder(resp.Body).Decode(&g); err != nil {
		log.Fatal(err)
	}
	// The first graph scrapes twice, a rate window apart: it shows a rate.
	for _, e := range g.Edges {
		fmt.Println(e.ID, e.Requests, e.Health, e.Rate > 0)
	}
	// Output:
	// default/checkout/v1->default/payments/v1 14 healthy true
}
