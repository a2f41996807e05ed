package benchmarks

import (
	"context"
	"testing"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/stats/opentelemetry"

	"mesh"
	"mesh/controlplane"
	"mesh/internal/shop"
	"mesh/telemetry/otelsdk"
)

// allowCheckoutYAML turns on RBAC at payments: only checkout's identity may
// call it, so every benchmarked RPC passes an authorization decision.
const allowCheckoutYAML = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: payments-from-checkout, namespace: default}
spec:
  selector: {matchLabels: {app: payments}}
  action: ALLOW
  rules:
  - from:
    - source: {principals: ["cluster.local/ns/default/sa/checkout"]}
`

// UnaryMeshFull is UnaryMesh with every default on: Istio's metrics for both
// reporters handed to the OpenTelemetry SDK (a manual reader, as a
// Prometheus exporter is; histograms through telemetry/otelsdk's producer),
// peer metadata exchange, x-request-id, tracing with a parent-based sampler
// that samples no root (as production mostly runs), RBAC, routing and
// STRICT mTLS.
func UnaryMeshFull(b *testing.B) { unaryMeshFull(b, true) }

// UnaryMeshFullSDKHistograms is UnaryMeshFull with the histograms recorded
// by the SDK's own synchronous instruments (no producer on the reader).
func UnaryMeshFullSDKHistograms(b *testing.B) { unaryMeshFull(b, false) }

func unaryMeshFull(b *testing.B, producer bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	w := shop.StartWorldWith(b, ctx,
		shop.WorldConfig{V1: 100, V2: 0, Sampler: sdktrace.ParentBased(sdktrace.NeverSample())},
		shop.WorldOptions{Mesh: func(controlplane.Workload, string) []mesh.Option {
			if !producer {
				mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
				b.Cleanup(func() { mp.Shutdown(context.Background()) })
				return []mesh.Option{mesh.WithMeterProvider(mp)}
			}
			p := otelsdk.NewProducer()
			mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader(sdkmetric.WithProducer(p))))
			b.Cleanup(func() { mp.Shutdown(context.Background()) })
			return []mesh.Option{mesh.WithMeterProvider(p.MeterProvider(mp))}
		}})
	if err := w.ControlPlane.Apply([]byte(allowCheckoutYAML)); err != nil {
		b.Fatal(err)
	}
	// The policy reaches payments asynchronously; wait until calls pass it.
	if err := shop.WaitFor(ctx, w.Conn, 1, func(shop.Reply) bool { return true }); err != nil {
		b.Fatal(err)
	}
	runUnary(ctx, b, w.Conn)
}

// UnaryGRPCOTel is UnaryGRPC with grpc-go's own OpenTelemetry metrics plugin
// on client and server, recording through the SDK: less than mesh records
// (no peer labels, no traces, no request IDs), for comparison.
func UnaryGRPCOTel(b *testing.B) {
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(sdkmetric.NewManualReader()))
	defer mp.Shutdown(context.Background())
	o := opentelemetry.Options{MetricsOptions: opentelemetry.MetricsOptions{MeterProvider: mp}}
	unaryGRPC(b, []grpc.DialOption{opentelemetry.DialOption(o)}, []grpc.ServerOption{opentelemetry.ServerOption(o)})
}
