package telemetry_test

import (
	"context"
	"net"
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/stats"

	"mesh/telemetry"
)

// runHandler drives h through the events grpc-go emits for one unary RPC.
func runHandler(ctx context.Context, h stats.Handler, info *stats.RPCTagInfo, events []stats.RPCStats) {
	ctx = h.TagRPC(ctx, info)
	for _, e := range events {
		h.HandleRPC(ctx, e)
	}
}

var benchInfo = &stats.RPCTagInfo{FullMethodName: "/grpc.health.v1.Health/Check"}

func clientEvents() []stats.RPCStats {
	remote := &net.TCPAddr{IP: net.IPv4(10, 0, 0, 7), Port: 8080}
	return []stats.RPCStats{
		&stats.Begin{Client: true},
		&stats.OutHeader{Client: true, Authority: "payments.default.svc.cluster.local:8080", RemoteAddr: remote},
		&stats.OutPayload{Client: true},
		&stats.InHeader{Client: true},
		&stats.InPayload{Client: true},
		&stats.InTrailer{Client: true},
		&stats.End{Client: true},
	}
}

func serverEvents() []stats.RPCStats {
	remote := &net.TCPAddr{IP: net.IPv4(10, 0, 0, 8), Port: 40000}
	return []stats.RPCStats{
		&stats.InHeader{RemoteAddr: remote},
		&stats.Begin{},
		&stats.InPayload{},
		&stats.OutHeader{},
		&stats.OutPayload{},
		&stats.OutTrailer{},
		&stats.End{},
	}
}

// BenchmarkClientHandler measures the per-RPC cost of client tracing when
// the sampler drops every span: trace context is still injected.
func BenchmarkClientHandler(b *testing.B) {
	tp, _ := newRecordingProvider(b, sdktrace.NeverSample())
	h := telemetry.NewClientHandler(telemetry.WithTracerProvider(tp))
	events := clientEvents()
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		runHandler(ctx, h, benchInfo, events)
	}
}

// BenchmarkServerHandler is the server-side counterpart: extract, start an
// unsampled child span, end it.
func BenchmarkServerHandler(b *testing.B) {
	tp, _ := newRecordingProvider(b, sdktrace.ParentBased(sdktrace.AlwaysSample()))
	h := telemetry.NewServerHandler(telemetry.WithTracerProvider(tp))
	events := serverEvents()
	ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs(
		"traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
		"user-agent", "grpc-go/1.85.0",
	))
	b.ReportAllocs()
	for b.Loop() {
		runHandler(ctx, h, benchInfo, events)
	}
}

// BenchmarkClientHandlerWithMetrics adds Istio's metrics, peer metadata
// and a sampled span to the client's per-RPC cost.
func BenchmarkClientHandlerWithMetrics(b *testing.B) {
	tp, _ := newRecordingProvider(b, sdktrace.AlwaysSample())
	mp, _ := newMeter(b)
	h := telemetry.NewClientHandler(telemetry.WithTracerProvider(tp), telemetry.WithMeterProvider(mp),
		telemetry.WithWorkload(checkout), telemetry.WithService(paymentsHost))
	events := clientEvents()
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		runHandler(ctx, h, benchInfo, events)
	}
}
