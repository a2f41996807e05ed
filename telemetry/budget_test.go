package telemetry_test

import (
	"context"
	"net"
	"testing"

	"go.opentelemetry.io/otel/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"mesh/telemetry"
	"mesh/telemetry/otelsdk"
)

// callAllocs returns the allocations of one unary call, client and server
// together, over a channel and server built with opts.
func callAllocs(t *testing.T, dialOpts []grpc.DialOption, serverOpts []grpc.ServerOption) float64 {
	t.Helper()
	client := startHealth(t, dialOpts, serverOpts)
	ctx := context.Background()
	req := &healthpb.HealthCheckRequest{}
	call := func() {
		if _, err := client.Check(ctx, req); err != nil {
			t.Fatal(err)
		}
	}
	call() // connect, and cache the label sets
	return testing.AllocsPerRun(200, call)
}

// startHealth serves grpc-go's health service with serverOpts and returns
// a client over plaintext with dialOpts; both stop with the test.
func startHealth(t *testing.T, dialOpts []grpc.DialOption, serverOpts []grpc.ServerOption) healthpb.HealthClient {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(serverOpts...)
	healthpb.RegisterHealthServer(srv, health.NewServer())
	served := make(chan struct{})
	go func() { defer close(served); _ = srv.Serve(lis) }()
	t.Cleanup(func() { srv.Stop(); <-served })
	conn, err := grpc.NewClient("passthrough:///"+lis.Addr().String(),
		append(dialOpts, grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return healthpb.NewHealthClient(conn)
}

// TestInterceptorAllocationBudget keeps what telemetry adds to a call in
// check: spans (unsampled), trace context, x-request-id, peer metadata both
// ways, Istio's metrics through the SDK for both reporters. The budget is
// what the pieces cost today (see benchmarks/TELEMETRY.md), so a new
// per-call map, slice or label set fails it.
func TestInterceptorAllocationBudget(t *testing.T) {
	if raceEnabled {
		t.Skip("allocation counts differ under the race detector")
	}
	const budget = 36 // 35 today, one spare for a busy machine
	sdk, _ := newMeter(t)
	producer := otelsdk.NewProducer()
	tp, _ := newRecordingProvider(t, sdktrace.ParentBased(sdktrace.NeverSample()))
	plain := callAllocs(t, nil, nil)
	for name, mp := range map[string]metric.MeterProvider{"sdk histograms": sdk, "producer": producer.MeterProvider(sdk)} {
		client := telemetry.NewClientInterceptor(telemetry.WithMeterProvider(mp), telemetry.WithTracerProvider(tp), telemetry.WithWorkload(checkout))
		server := telemetry.NewServerInterceptor(telemetry.WithMeterProvider(mp), telemetry.WithTracerProvider(tp), telemetry.WithWorkload(payments))
		traced := callAllocs(t, client.DialOptions(), server.ServerOptions())
		t.Logf("%s: allocations per call: %v without telemetry, %v with", name, plain, traced)
		if traced-plain > budget {
			t.Errorf("%s: telemetry adds %v allocations per call, budget %d", name, traced-plain, budget)
		}
	}
}
