// Package sidecar measures mesh against plain grpc-go with mutual TLS and
// against a sidecar pair, side by side in one run, with every client,
// server and proxy a process of its own so that each one's CPU time counts.
//
//	res, err := sidecar.Run(ctx, sidecar.Config{})
//	res.WriteMarkdown(os.Stdout)
//
// The echo (PayloadSize bytes each way, one unary method) runs in these
// variants: B, plain grpc-go + mTLS; Bw and Bh, B with the grpc-go options
// mesh sets and B with the two headers a mesh call adds; C, the same
// plaintext client and server through an HAProxy mTLS pair (one thread
// each, TCP mode, TLS both sides, the control plane's SVIDs); C7, the same
// pair in HTTP mode, HTTP/2 on every hop, as an Envoy pair handles gRPC in
// Istio (both pairs are stand-ins for Envoy, which cannot be installed
// here); M, mesh to mesh with xDS routing, STRICT mTLS, RBAC, Istio
// metrics through the OpenTelemetry SDK (the histograms through
// telemetry/otelsdk's producer) and tracing sampled parent-based with a
// never-sample root; M-sdk, M with the SDK's own histograms; M-lean, the
// same with no-op meter and tracer providers; G, B plus grpc-go's own
// OpenTelemetry metrics plugin. Each runs one echo at a time (latency),
// eight at a time (throughput, CPU) and an open loop at a fixed rate
// (latency from each call's intended send time), variants taking turns.
//
// The processes it measures run the role program (package roles), which
// Run builds from mesh's module: it links what each variant's service
// links, not the harness and its control plane.
package sidecar
