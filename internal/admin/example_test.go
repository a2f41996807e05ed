package admin_test

import (
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"

	"mesh/internal/admin"
	"mesh/internal/admin/xdsview"
	"mesh/xdsclient"
)

// ExampleGraphFromMetrics builds the service graph from the Prometheus text
// of two workloads: checkout reports the requests, payments the security
// policy it saw.
func ExampleGraphFromMetrics() {
	checkout, _ := admin.ParseMetrics(strings.NewReader(
		series("source", "checkout", "payments", "v1", "grpc", "200", "0", "unknown", 98) +
			series("source", "checkout", "payments", "v1", "grpc", "200", "14", "unknown", 2)))
	payments, _ := admin.ParseMetrics(strings.NewReader(
		series("destination", "checkout", "payments", "v1", "grpc", "200", "0", "mutual_tls", 100)))
	g := admin.GraphFromMetrics(checkout, payments)
	for _, e := range g.Edges {
		fmt.Printf("%s: %.0f requests, %.0f%% errors, mTLS %t, %s\n", e.ID, e.Requests, 100*e.ErrorRatio, e.MutualTLS, e.Health)
	}
	// Output:
	// default/checkout/v1->default/payments/v1: 100 requests, 2% errors, mTLS true, degraded
}

// ExampleNewHandler serves a workload's xDS configuration at /debug/config.
func ExampleNewHandler() {
	h := admin.NewHandler(admin.Config{
		XDS: func() []admin.ResourceView { // in a workload: its xdsclient.Client's Dump
			return xdsview.Resources([]xdsclient.ResourceStatus{{
				Type: "listener", Name: "payments.default.svc.cluster.local:8080", Version: "7",
				Status: xdsclient.StatusNACKed,
				Error:  errors.New(`listener "payments.default.svc.cluster.local:8080": api_listener: missing`),
			}})
		},
	})
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/debug/config", nil))
	fmt.Print(rec.Body.String())
	// Output:
	// {
	//   "resources": [
	//     {
	//       "type": "listener",
	//       "type_url": "",
	//       "name": "payments.default.svc.cluster.local:8080",
	//       "version": "7",
	//       "status": "NACK",
	//       "error": "listener \"payments.default.svc.cluster.local:8080\": api_listener: missing"
	//     }
	//   ]
	// }
}
