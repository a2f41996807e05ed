package controlplane

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"mesh/internal/admin"
)

func TestServeAdminGraphOfRegisteredWorkloads(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	s := newTestServer(t)

	checkout := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, `# TYPE istio_requests_total counter
istio_requests_total{reporter="source",source_workload_namespace="default",source_canonical_service="checkout",source_canonical_revision="v1",destination_service_namespace="default",destination_canonical_service="payments",destination_canonical_revision="v2",request_protocol="grpc",response_code="200",grpc_response_status="0",connection_security_policy="unknown"} 42
`)
	}))
	t.Cleanup(checkout.Close)
	payments := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, `# TYPE istio_requests_total counter
istio_requests_total{reporter="destination",source_workload_namespace="default",source_canonical_service="checkout",source_canonical_revision="v1",destination_service_namespace="default",destination_canonical_service="payments",destination_canonical_revision="v2",request_protocol="grpc",response_code="200",grpc_response_status="0",connection_security_policy="mutual_tls"} 42
`)
	}))
	t.Cleanup(payments.Close)

	if err := s.RegisterMetricsEndpoint("checkout", checkout.URL+"/metrics"); err != nil {
		t.Fatal(err)
	}
	if err := s.RegisterMetricsEndpoint("payments-v2", payments.URL+"/metrics"); err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"ftp://x/metrics", "::", "http:///metrics"} {
		if err := s.RegisterMetricsEndpoint("w", bad); err == nil {
			t.Errorf("RegisterMetricsEndpoint(%q) accepted", bad)
		}
	}
	if err := s.RegisterMetricsEndpoint("", checkout.URL); err == nil {
		t.Error("RegisterMetricsEndpoint with no workload accepted")
	}
	if got := s.MetricsEndpoints(); len(got) != 2 || got["checkout"] != checkout.URL+"/metrics" {
		t.Errorf("MetricsEndpoints = %v", got)
	}

	// The routes in force give the edge its weight.
	if err := s.Apply([]byte(`apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: payments, namespace: default}
spec:
  host: payments
  subsets:
  - {name: stable, labels: {version: v1}}
  - {name: canary, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: payments, namespace: default}
spec:
  hosts: [payments]
  http:
  - route:
    - {destination: {host: payments, subset: stable}, weight: 85}
    - {destination: {host: payments, subset: canary}, weight: 15}
`)); err != nil {
		t.Fatal(err)
	}

	base, err := s.ServeAdmin(ctx, "127.0.0.1:0")
	if err != nil {
		t.Fatalf("ServeAdmin: %v", err)
	}
	resp, err := http.Get(base + "/debug/graph.json")
	if err != nil {
		t.Fatalf("get graph: %v", err)
	}
	var g admin.Graph
	err = json.NewDecoder(resp.Body).Decode(&g)
	_ = resp.Body.Close()
	if err != nil {
		t.Fatalf("decode graph: %v", err)
	}
	e, ok := g.Edge(admin.NodeID("default", "checkout", "v1"), admin.NodeID("default", "payments", "v2"))
	if !ok || e.Requests != 42 || !e.MutualTLS || len(g.Errors) != 0 || e.Weight == nil || *e.Weight != 15 {
		t.Errorf("graph = %+v, want checkout -> payments v2, 42 requests over mTLS, weight 15", g)
	}

	// Close stops the admin server.
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if resp, err := http.Get(base + "/healthz"); err == nil {
		_ = resp.Body.Close()
		t.Errorf("admin still serving after Close")
	}
	if _, err := s.ServeAdmin(ctx, "127.0.0.1:0"); !errors.Is(err, ErrClosed) {
		t.Errorf("ServeAdmin after Close: %v, want ErrClosed", err)
	}
}
