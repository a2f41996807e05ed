// Package telemetry gives gRPC traffic OpenTelemetry traces that join those
// of Envoy sidecars, using the OpenTelemetry API only: the application
// chooses the SDK and exporter.
//
// Quick start:
//
//	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exporter))
//	defer tp.Shutdown(ctx)
//
//	conn, err := grpc.NewClient(target,
//		grpc.WithTransportCredentials(creds),
//		grpc.WithStatsHandler(telemetry.NewClientHandler(telemetry.WithTracerProvider(tp))),
//	)
//
//	srv := grpc.NewServer(
//		grpc.StatsHandler(telemetry.NewServerHandler(telemetry.WithTracerProvider(tp))),
//	)
//
// The client handler records a client span per RPC attempt, named after the
// method as "package.Service/Method", and writes the span's W3C trace context
// (traceparent, tracestate) and baggage into the request metadata. The server
// handler reads them back, records a server span as the client span's child
// and hands it to the service method in its context, so spans the method
// starts join the same trace.
//
// Spans carry the OpenTelemetry RPC attributes: rpc.system, rpc.service,
// rpc.method, rpc.grpc.status_code, server.address and server.port (the
// authority the client dialed), network.peer.address and network.peer.port.
// A client span is marked as an error for every non-OK status; a server span
// only for statuses that point at the server (Unknown, DeadlineExceeded,
// Unimplemented, Internal, Unavailable, DataLoss), as the conventions ask.
//
// Trace context propagates even when the sampler drops a span: the next hop
// sees the trace with its sampled flag clear, and agrees not to sample it.
//
// Other propagation formats plug in with WithPropagator; MetadataCarrier
// lets any OpenTelemetry propagator read and write gRPC metadata.
package telemetry
