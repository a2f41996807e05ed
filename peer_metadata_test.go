package mesh_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/structpb"

	"mesh"
	"mesh/controlplane"
	"mesh/internal/shop"
	"mesh/internal/testutil"
	"mesh/telemetry"
)

// Two mesh workloads exchange their Istio peer metadata once per
// connection, at the handshake, and no call carries it in headers; yet
// both reporters label every call with the other side's workload, as
// Kiali's queries need.
func TestPeerMetadataTravelsOncePerConnection(t *testing.T) {
	ctx := testutil.Context(t)
	var mu sync.Mutex
	readers := map[string]*sdkmetric.ManualReader{}
	var counting atomic.Bool
	var served, servedWithHeader atomic.Int64
	record := func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if counting.Load() {
			served.Add(1)
			if len(metadata.ValueFromIncomingContext(ctx, telemetry.HeaderPeerMetadata)) > 0 {
				servedWithHeader.Add(1)
			}
		}
		return handler(ctx, req)
	}
	w := shop.StartWorldWith(t, ctx, shop.WorldConfig{V1: 100, V2: 0}, shop.WorldOptions{
		Mesh: func(wl controlplane.Workload, _ string) []mesh.Option {
			r := sdkmetric.NewManualReader()
			mu.Lock()
			readers[wl.Name] = r
			mu.Unlock()
			return []mesh.Option{mesh.WithMeterProvider(sdkmetric.NewMeterProvider(sdkmetric.WithReader(r)))}
		},
		PaymentsServer: func(controlplane.Workload) []grpc.ServerOption {
			return []grpc.ServerOption{grpc.ChainUnaryInterceptor(record)}
		},
	})
	// Each reporter's counts so far: StartWorld's calls, of which the first
	// may fail fast while the endpoint connects (no upstream, so no peer:
	// "unknown", as Envoy labels them).
	type reporterCheck struct{ workload, reporter, peerLabel, want string }
	checks := []reporterCheck{
		{"checkout", "source", "destination_workload", "payments-v1"},
		{"payments-v1", "destination", "source_workload", "checkout"},
	}
	reader := func(workload string) *sdkmetric.ManualReader {
		mu.Lock()
		defer mu.Unlock()
		return readers[workload]
	}
	before := make([]map[string]int64, len(checks))
	for i, tc := range checks {
		before[i] = requestsByLabel(ctx, t, reader(tc.workload), tc.reporter, tc.peerLabel)
	}
	// StartWorld's first calls found the server exchanging: from here on
	// no call carries the metadata, either way.
	counting.Store(true)
	const calls = 20
	for range calls {
		var header metadata.MD
		if err := w.Conn.Invoke(ctx, shop.ChargeMethod, &structpb.Struct{}, new(structpb.Struct), grpc.Header(&header)); err != nil {
			t.Fatal(err)
		}
		if v := header.Get(telemetry.HeaderPeerMetadata); len(v) > 0 {
			t.Fatalf("the response carried %s: %.40q...", telemetry.HeaderPeerMetadata, v[0])
		}
	}
	if served.Load() != calls || servedWithHeader.Load() != 0 {
		t.Errorf("the server served %d calls, %d of them with %s; want %d and 0", served.Load(), servedWithHeader.Load(), telemetry.HeaderPeerMetadata, calls)
	}

	// Each reporter counted every one of these calls with the other side's
	// labels, and none without.
	for i, tc := range checks {
		after := requestsByLabel(ctx, t, reader(tc.workload), tc.reporter, tc.peerLabel)
		added := map[string]int64{}
		for label, n := range after {
			if d := n - before[i][label]; d != 0 {
				added[label] = d
			}
		}
		if added[tc.want] != calls || len(added) != 1 {
			t.Errorf("%s's istio_requests_total{reporter=%q} by %s grew by %v over %d calls; want only %q, by %d", tc.workload, tc.reporter, tc.peerLabel, added, calls, tc.want, calls)
		}
	}
}

// requestsByLabel sums istio_requests_total of reporter by the value of
// label.
func requestsByLabel(ctx context.Context, t *testing.T, r *sdkmetric.ManualReader, reporter, label string) map[string]int64 {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := r.Collect(ctx, &rm); err != nil {
		t.Fatal(err)
	}
	out := map[string]int64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name != "istio_requests_total" {
				continue
			}
			sum, ok := m.Data.(metricdata.Sum[int64])
			if !ok {
				t.Fatalf("istio_requests_total is %T", m.Data)
			}
			for _, dp := range sum.DataPoints {
				if v, _ := dp.Attributes.Value(attribute.Key("reporter")); v.AsString() != reporter {
					continue
				}
				v, _ := dp.Attributes.Value(attribute.Key(label))
				out[v.AsString()] += dp.Value
			}
		}
	}
	return out
}
