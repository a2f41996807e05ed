package controlplane

import (
	"context"
	"slices"
	"testing"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/structpb"

	"mesh/internal/testutil"
)

// TestDeltaInboundListenerRegistersEndpoint runs the server side of a
// workload over incremental (delta) ADS.
func TestDeltaInboundListenerRegistersEndpoint(t *testing.T) {
	s := newTestServer(t)
	ctx := testutil.Context(t)
	const nodeID = "sidecar~127.0.0.1~payments-d.default~default.svc.cluster.local"
	conn, err := grpc.NewClient(s.Addr(), xdsDialOptions(t, s, Workload{Name: "payments-d", Service: "payments", Port: 8080}.withDefaults(), nodeID)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	streamCtx, cancel := context.WithCancel(ctx)
	t.Cleanup(cancel)
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(conn).DeltaAggregatedResources(streamCtx)
	if err != nil {
		t.Fatal(err)
	}
	md, _ := structpb.NewStruct(map[string]any{metaNamespace: "default", metaService: paymentsListener})
	name := inboundName("127.0.0.1:9301")
	err = stream.Send(&discovery.DeltaDiscoveryRequest{
		Node:                   &core.Node{Id: nodeID, Metadata: md},
		TypeUrl:                resource.ListenerType,
		ResourceNamesSubscribe: []string{name},
	})
	if err != nil {
		t.Fatal(err)
	}
	for {
		r, err := stream.Recv()
		if err != nil {
			t.Fatalf("delta recv: %v", err)
		}
		if len(r.GetResources()) == 1 && r.GetResources()[0].GetName() == name {
			break
		}
	}

	client := dialADS(t, s, clientNode())
	client.subscribe(resource.EndpointType, paymentsCluster)
	client.await(ctx, resource.EndpointType, func(r *discovery.DiscoveryResponse) bool {
		cla, ok := decode[*endpointv3.ClusterLoadAssignment](t, r)[paymentsCluster]
		return ok && slices.Equal(endpointAddrs(cla), []string{"127.0.0.1:9301"})
	})
}
