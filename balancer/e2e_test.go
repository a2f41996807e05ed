package balancer

import (
	"context"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	clusterpb "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corepb "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	routepb "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"mesh/internal/testutil"
	"mesh/xdsclient"
	"mesh/xdsclient/xdstest"
)

// realXDS starts a go-control-plane server on 127.0.0.1:0 and an
// xdsclient.Client connected to it.
func realXDS(t *testing.T) (*xdstest.Server, *xdsclient.Client) {
	t.Helper()
	srv := xdstest.NewServer(t)
	client, err := xdsclient.New(srv.Bootstrap("node-1"))
	if err != nil {
		t.Fatalf("xdsclient.New: %v", err)
	}
	t.Cleanup(func() { _ = client.Close() })
	return srv, client
}

// policyResources is a listener for testTarget whose one route sends
// everything to cluster "c" (with max_requests) at addrs, with a timeout and
// retry policy.
func policyResources(maxRequests uint32, addrs ...string) (listeners, routes, clusters, endpoints []types.Resource) {
	rc := xdstest.RouteConfig("rc", "*", xdsclient.ClusterWeight{Name: "c", Weight: 1})
	action := rc.VirtualHosts[0].Routes[0].GetRoute()
	action.MaxStreamDuration = &routepb.RouteAction_MaxStreamDuration{MaxStreamDuration: durationpb.New(5 * time.Second)}
	action.RetryPolicy = &routepb.RetryPolicy{
		// As istiod writes them: Envoy-only conditions mixed in.
		RetryOn:      "connect-failure,refused-stream,unavailable,cancelled,5xx",
		NumRetries:   wrapperspb.UInt32(2),
		RetryBackOff: &routepb.RetryPolicy_RetryBackOff{BaseInterval: durationpb.New(time.Millisecond)},
	}
	cluster := xdstest.EDSCluster("c", false)
	cluster.CircuitBreakers = &clusterpb.CircuitBreakers{Thresholds: []*clusterpb.CircuitBreakers_Thresholds{{
		Priority: corepb.RoutingPriority_DEFAULT, MaxRequests: wrapperspb.UInt32(maxRequests)}}}
	return []types.Resource{xdstest.ClientListener(testTarget, "rc")},
		[]types.Resource{rc},
		[]types.Resource{cluster},
		[]types.Resource{xdstest.Endpoints("c", addrs...)}
}

func TestRetriesAndCircuitBreakerFromAControlPlane(t *testing.T) {
	checkNoLeaks(t)
	ctx := testutil.Context(t)
	srv, client := realXDS(t)

	// HTTP: the first attempt of each request gets a 503.
	var httpAttempts atomic.Int64
	release := make(chan struct{})
	web := startHTTPBackend(t, "web", http1Plain, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/block" {
			<-release
			return
		}
		if httpAttempts.Add(1)%2 == 1 {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	})
	// gRPC: the first attempt of each RPC fails UNAVAILABLE.
	var grpcAttempts atomic.Int64
	rpc, _ := startScriptedBackend(t, func(context.Context, int64) error {
		if grpcAttempts.Add(1)%2 == 1 {
			return status.Error(codes.Unavailable, "first attempt fails")
		}
		return nil
	})

	l, r, c, e := policyResources(1, web.addr)
	srv.SetResources(t, "node-1", l, r, c, e)
	rt := NewRoundTripper(client, (&testDialer{}).dial)
	t.Cleanup(func() { _ = rt.Close() })
	httpClient := &http.Client{Transport: rt}
	for i := range 3 {
		resp, err := httpClient.Get("http://" + testTarget + "/x")
		if err != nil || resp.StatusCode != http.StatusOK {
			t.Fatalf("HTTP request %d: %v %v, want 200 after a retry", i, resp, err)
		}
		_ = resp.Body.Close()
	}
	if n := httpAttempts.Load(); n != 6 {
		t.Errorf("HTTP backend saw %d attempts for 3 requests, want 6", n)
	}
	// max_requests 1: a request in flight opens the circuit.
	blocked := make(chan error, 1)
	go func() {
		resp, err := httpClient.Get("http://" + testTarget + "/block")
		if err == nil {
			_ = resp.Body.Close()
		}
		blocked <- err
	}()
	testutil.WaitFor(ctx, t, "the blocked request to be in flight", func() bool { return web.hitsOf("/block") == 1 })
	if _, err := httpClient.Get("http://" + testTarget + "/x"); err == nil || !strings.Contains(err.Error(), "circuit breaker") {
		t.Fatalf("second concurrent request: %v, want the circuit breaker to reject it", err)
	}
	close(release)
	if err := <-blocked; err != nil {
		t.Fatal(err)
	}

	// The same resources, pointed at the gRPC backend, for a gRPC channel.
	l, r, c, e = policyResources(1024, rpc.addr)
	srv.SetResources(t, "node-1", l, r, c, e)
	builder := NewResolverBuilder(client)
	conn, err := grpc.NewClient("mesh:///"+testTarget, append(builder.DialOptions(), grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	tc := testgrpc.NewTestServiceClient(conn)
	// The channel sees the route once its first RPC resolved it.
	testutil.WaitFor(ctx, t, "the channel's routes", func() bool {
		_, _ = tc.EmptyCall(ctx, &testpb.Empty{}, grpc.WaitForReady(true))
		_, route, _ := builder.routeFor(ctx, conn, "/grpc.testing.TestService/EmptyCall")
		return route != nil && route.Action.RetryPolicy != nil
	})
	grpcAttempts.Store(0)
	for i := range 3 {
		if _, err := tc.EmptyCall(ctx, &testpb.Empty{}); err != nil {
			t.Fatalf("RPC %d: %v, want success after a retry", i, err)
		}
	}
	if n := grpcAttempts.Load(); n != 6 {
		t.Errorf("gRPC backend saw %d attempts for 3 RPCs, want 6", n)
	}
}
