// Package telemetry gives gRPC and net/http traffic what an Envoy sidecar
// gives it in Istio: Istio's standard metrics, traces that join those of
// sidecars, Istio's peer metadata exchange and Envoy-style access logs. It
// uses the OpenTelemetry API only: the application chooses the SDK and
// exporters.
//
// Quick start:
//
//	me := telemetry.Workload{Name: "checkout-v1", Namespace: "shop", App: "checkout", Version: "v1",
//		Principal: "spiffe://cluster.local/ns/shop/sa/checkout"}
//	opts := []telemetry.Option{
//		telemetry.WithTracerProvider(tp), // an sdktrace.TracerProvider with an exporter
//		telemetry.WithMeterProvider(mp),  // an sdkmetric.MeterProvider with the Prometheus exporter
//		telemetry.WithWorkload(me),
//		telemetry.WithAccessLog(slog.Default(), telemetry.AccessLogConfig{SampleRate: 0.1}),
//	}
//
//	// gRPC: interceptors (or, at a higher cost, the stats handlers
//	// NewClientHandler and NewServerHandler record the same).
//	client := telemetry.NewClientInterceptor(opts...)
//	conn, err := grpc.NewClient(target, append(client.DialOptions(), grpc.WithTransportCredentials(creds))...)
//	srv := grpc.NewServer(telemetry.NewServerInterceptor(opts...).ServerOptions()...)
//
//	// net/http: the same for servers and clients.
//	http.ListenAndServe(addr, telemetry.Middleware(mux, opts...))
//	client := &http.Client{Transport: telemetry.Transport(http.DefaultTransport, opts...)}
//
// # Metrics
//
// Every request is counted once by each side, under Istio's names:
// istio_requests_total (a counter), istio_request_duration_milliseconds,
// istio_request_bytes and istio_response_bytes (histograms with Envoy's
// default buckets, as Istio's sidecars), for gRPC also
// istio_request_messages_total and istio_response_messages_total (message
// counts), each with Istio's label set: reporter ("source" on clients,
// "destination" on servers), source_* and destination_* workload labels,
// destination_service(_name, _namespace), request_protocol ("grpc" or
// "http"), response_code (200 for every gRPC response, as Envoy reports it;
// 0 when none came), grpc_response_status, response_flags ("-" for none;
// "UF", "UT", "DC" or what the router set) and connection_security_policy
// ("mutual_tls" or "none" on servers, "unknown" on clients, as Istio
// reports). Through the OpenTelemetry Prometheus exporter the series come
// out with exactly Istio's names and labels (turn off its scope labels with
// its WithoutScopeInfo option), so Istio's Grafana dashboards and Kiali work
// unchanged. Byte counts mean what Envoy's request.total_size and
// response.total_size mean: the body on the wire (for gRPC the framed
// messages) plus the headers' (and trailers') names and values,
// uncompressed, pseudo headers included. A gRPC server counts the headers
// every gRPC request carries and those it reads, not every header.
//
// # Cost
//
// NewClientInterceptor and NewServerInterceptor record the same as the
// stats handlers at a fraction of their cost: once any stats handler is
// installed, grpc-go builds an object per event of every RPC. Each label set
// is built once and cached (bounded), so recording a known series
// allocates nothing. The counters are atomics read when the meter provider
// collects. The SDK's synchronous histograms walk all of Istio's labels on
// every measurement; with the OpenTelemetry SDK, give the reader package
// mesh/telemetry/otelsdk's Producer and telemetry the meter provider it
// wraps, and the histograms are atomics too, read at collection.
//
// # Peer metadata
//
// The local workload's labels come from WithWorkload. Clients send them in
// the x-envoy-peer-metadata and x-envoy-peer-metadata-id request headers,
// servers in the same response headers, in the format of Istio's metadata
// exchange (a base64 google.protobuf.Struct with NAME, NAMESPACE,
// WORKLOAD_NAME, CLUSTER_ID, LABELS, ...), so a mesh workload and an Istio
// sidecar learn each other's labels. Principals come from the mutual TLS
// handshake, never from headers.
//
// Credentials that exchange the same value once per connection (mesh's
// transport.WithPeerMetadata, between two mesh workloads) spare every call
// those headers: with WithPeerAuthMetadata, a server reads the client's
// labels from the connection and sends none back, and a client channel
// stops sending and reading them once its calls find their servers
// exchanging; a channel whose servers do not keeps the headers.
//
// # Traces
//
// The client handler records a client span per RPC attempt, named after the
// method as "package.Service/Method", and writes its trace context into the
// request metadata; the server handler continues that trace and hands its
// server span to the service method in the context. HTTP spans are named
// after the method. The default format is W3C Trace Context and Baggage;
// B3{} speaks Zipkin's B3 (multi-header, or single-header with
// SingleHeader), and EnvoyPropagator writes both. Trace context propagates
// even when the sampler drops a span.
//
// Spans carry the OpenTelemetry RPC or HTTP attributes (rpc.system,
// rpc.service, rpc.method, rpc.grpc.status_code, server.address,
// server.port, network.peer.address, ...) and Envoy's: guid:x-request-id,
// and, once the router reports them through SetRouteInfo, upstream_cluster,
// upstream_subset, upstream_address, retry.count and response_flags. A
// client span is marked as an error for every non-OK status; a server span
// only for statuses that point at the server (Unknown, DeadlineExceeded,
// Unimplemented, Internal, Unavailable, DataLoss), as the conventions ask.
//
// Every request carries an x-request-id: the caller's, or one generated as a
// UUID. A server puts it in the context (RequestIDFromContext), and calls
// made with that context send it on, as sidecars do.
//
// # Access logs
//
// WithAccessLog writes one slog record per request, message "access", with
// Envoy's fields: start_time, method, path, protocol, response_code,
// response_flags, duration (milliseconds), upstream_cluster, upstream_host,
// bytes_received, bytes_sent, peer_principal, request_id and trace_id.
// Sampling is decided by request ID, so all hops log the same requests.
//
// # Admin pages
//
// The mesh's admin listener (package mesh/admin) serves /metrics, the xDS
// configuration in force and a live service graph built from these metrics,
// as Kiali builds its graph; the embedded control plane serves the graph of
// the whole mesh.
package telemetry
