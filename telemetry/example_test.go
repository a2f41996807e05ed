package telemetry_test

import (
	"context"
	"fmt"
	"log"
	"net"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"

	"mesh/telemetry"
)

// traceReporter is a health service that prints the trace its requests
// belong to.
type traceReporter struct {
	healthpb.UnimplementedHealthServer
}

func (traceReporter) Check(ctx context.Context, _ *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	fmt.Println("server sees trace", trace.SpanContextFromContext(ctx).TraceID())
	return &healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING}, nil
}

// A client and a server on loopback: the caller's trace reaches the service
// method. A real program gives its SDK TracerProvider an exporter; the span
// recorder used here just keeps the finished spans in memory.
func ExampleNewClientHandler() {
	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	defer func() { _ = tp.Shutdown(context.Background()) }()

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	srv := grpc.NewServer(grpc.StatsHandler(telemetry.NewServerHandler(telemetry.WithTracerProvider(tp))))
	healthpb.RegisterHealthServer(srv, traceReporter{})
	go func() { _ = srv.Serve(lis) }()
	defer srv.Stop()

	conn, err := grpc.NewClient("passthrough:///"+lis.Addr().String(),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithStatsHandler(telemetry.NewClientHandler(telemetry.WithTracerProvider(tp))),
	)
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()

	// As if this request continued a trace that reached us from elsewhere.
	traceID, _ := trace.TraceIDFromHex("4bf92f3577b34da6a3ce929d0e0e4736")
	spanID, _ := trace.SpanIDFromHex("00f067aa0ba902b7")
	ctx := trace.ContextWithRemoteSpanContext(context.Background(), trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: traceID, SpanID: spanID, TraceFlags: trace.FlagsSampled,
	}))
	if _, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		log.Fatal(err)
	}

	// The client span has ended by the time a unary call returns.
	for _, s := range spans.Ended() {
		if s.SpanKind() == trace.SpanKindClient {
			fmt.Println("client span", s.Name(), "in trace", s.SpanContext().TraceID(), "under", s.Parent().SpanID())
		}
	}
	// Output:
	// server sees trace 4bf92f3577b34da6a3ce929d0e0e4736
	// client span grpc.health.v1.Health/Check in trace 4bf92f3577b34da6a3ce929d0e0e4736 under 00f067aa0ba902b7
}

// Server spans can carry attributes that identify the workload, and read a
// propagation format other than the default W3C one.
func ExampleNewServerHandler() {
	tp := sdktrace.NewTracerProvider() // add sdktrace.WithBatcher(exporter) to export spans
	defer func() { _ = tp.Shutdown(context.Background()) }()

	handler := telemetry.NewServerHandler(
		telemetry.WithTracerProvider(tp),
		telemetry.WithPropagator(propagation.TraceContext{}),
		telemetry.WithAttributes(attribute.String("service.namespace", "shop")),
	)
	srv := grpc.NewServer(grpc.StatsHandler(handler))
	defer srv.Stop()
	// Register services, then srv.Serve(listener).
}

// Any OpenTelemetry propagator can write gRPC metadata through
// MetadataCarrier.
func ExampleMetadataCarrier() {
	traceID, _ := trace.TraceIDFromHex("4bf92f3577b34da6a3ce929d0e0e4736")
	spanID, _ := trace.SpanIDFromHex("00f067aa0ba902b7")
	ctx := trace.ContextWithSpanContext(context.Background(), trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: traceID, SpanID: spanID, TraceFlags: trace.FlagsSampled,
	}))

	md := metadata.MD{}
	telemetry.DefaultPropagator().Inject(ctx, telemetry.MetadataCarrier(md))
	fmt.Println(md.Get("traceparent")[0])
	// Output:
	// 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01
}

// Reading trace context back out of metadata, as a server would.
func ExampleMetadataCarrier_extract() {
	md := metadata.Pairs("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")
	ctx := telemetry.DefaultPropagator().Extract(context.Background(), telemetry.MetadataCarrier(md))
	sc := trace.SpanContextFromContext(ctx)
	fmt.Println(sc.TraceID(), sc.SpanID(), "sampled:", sc.IsSampled(), "remote:", sc.IsRemote())
	// Output:
	// 4bf92f3577b34da6a3ce929d0e0e4736 00f067aa0ba902b7 sampled: false remote: true
}
