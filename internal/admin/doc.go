// Package admin serves a workload's operations pages over HTTP (through
// package mesh/admin, and for the whole mesh through the embedded control
// plane): Prometheus
// metrics, the xDS configuration in force (with ACK/NACK status and errors),
// cluster and endpoint state, a health check, and a live service graph drawn
// from Istio's standard metrics, as Kiali draws it.
//
// Quick start:
//
//	registry := prometheus.NewRegistry() // fed by the OTel Prometheus exporter
//	h := admin.NewHandler(admin.Config{
//		Metrics: promhttp.HandlerFor(registry, promhttp.HandlerOpts{}),
//		XDS:     m.XDSClient().Dump,
//		Graph:   admin.NewScraper(func() []string { return []string{"http://127.0.0.1:9464/metrics"} }),
//	})
//	go http.Serve(lis, h) // /metrics /debug/config /debug/clusters /debug/graph /healthz
//
// The handler is opt-in and read-only; bind it to a loopback or otherwise
// private address, as Envoy's admin port is.
//
// # Graph
//
// A [Scraper] reads the Prometheus text of each workload's /metrics and
// builds edges from istio_requests_total: source_canonical_service (and
// revision) to destination_canonical_service and revision, with the request
// count, the rate since the previous scrape, the share of errors (HTTP 5xx,
// gRPC status other than OK) and whether the destination saw mutual TLS.
// Source-reported series count requests, as Kiali's versioned-app graph
// does; destination-reported series supply the security policy, and the
// counts when no source reported. Edges are coloured with Kiali's default
// thresholds: [DegradedErrorRatio] and [FailureErrorRatio].
//
// /debug/graph is one self-contained HTML page (inline SVG and script, no
// external assets) that polls /debug/graph.json.
package admin
