package benchmarks

import (
	"context"
	"fmt"
	"net"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	clusterpb "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"

	"mesh/balancer"
	"mesh/xdsclient"
	"mesh/xdsclient/xdstest"
)

// TrafficRouteMatch measures route matching with header matchers: 10
// routes of 5 header matchers each (exact, prefix, suffix, contains,
// present), where the request (gRPC metadata, each header present once)
// fails the first nine routes on their last matcher and matches the tenth,
// then a 90/10 weighted cluster pick. It must report 0 allocs/op.
func TrafficRouteMatch(b *testing.B) {
	present := true
	var routes []xdsclient.Route
	for i := range 10 {
		routes = append(routes, xdsclient.Route{
			Match: xdsclient.RouteMatch{Prefix: "/mesh.examples.Payments/", CaseSensitive: true, Headers: []xdsclient.HeaderMatcher{
				{Name: "x-tenant", Match: &xdsclient.StringMatcher{Kind: xdsclient.MatchExact, Value: "acme"}},
				{Name: "x-region", Match: &xdsclient.StringMatcher{Kind: xdsclient.MatchPrefix, Value: "eu-"}},
				{Name: "x-client", Match: &xdsclient.StringMatcher{Kind: xdsclient.MatchSuffix, Value: "-android"}},
				{Name: "user-agent", Match: &xdsclient.StringMatcher{Kind: xdsclient.MatchContains, Value: "grpc-go"}},
				{Name: fmt.Sprintf("x-canary-%d", i), Present: &present},
			}},
			Action: xdsclient.RouteAction{WeightedClusters: []xdsclient.ClusterWeight{
				{Name: fmt.Sprintf("outbound|8080|v1|svc-%d", i), Weight: 90},
				{Name: fmt.Sprintf("outbound|8080|v2|svc-%d", i), Weight: 10},
			}},
		})
	}
	rc := &xdsclient.RouteConfig{Name: "payments:8080", VirtualHosts: []xdsclient.VirtualHost{{Domains: []string{"*"}, Routes: routes}}}
	r, err := balancer.NewRouter(rc, "payments:8080")
	if err != nil {
		b.Fatal(err)
	}
	headers := balancer.MetadataHeaders(metadata.Pairs(
		"x-tenant", "acme", "x-region", "eu-west-1", "x-client", "shop-android",
		"user-agent", "shop/1.0 grpc-go/1.85.0", "x-canary-9", "yes"))
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		cluster, _, err := r.Pick("/mesh.examples.Payments/Charge", headers)
		if err != nil || len(cluster) < len("outbound|8080|v1|svc-9") {
			b.Fatalf("pick: %q, %v", cluster, err)
		}
	}
}

// TrafficTailRoundRobin measures unary RPC latency over a mesh channel to
// four backends on loopback, one of which takes 2 ms longer to answer,
// with 16 RPCs in flight, under round_robin. It reports the p50, p90 and
// p99 latency and the share of RPCs the slow backend served.
func TrafficTailRoundRobin(b *testing.B) { trafficTail(b, clusterpb.Cluster_ROUND_ROBIN) }

// TrafficTailLeastRequest is TrafficTailRoundRobin under least_request,
// which steers RPCs away from the backend that has more in flight.
func TrafficTailLeastRequest(b *testing.B) { trafficTail(b, clusterpb.Cluster_LEAST_REQUEST) }

// slowBackendDelay is the extra time the slow backend takes per RPC.
const slowBackendDelay = 2 * time.Millisecond

type delayedService struct {
	testgrpc.UnimplementedTestServiceServer
	delay time.Duration
	calls atomic.Int64
}

func (s *delayedService) EmptyCall(context.Context, *testpb.Empty) (*testpb.Empty, error) {
	s.calls.Add(1)
	if s.delay > 0 {
		time.Sleep(s.delay)
	}
	return &testpb.Empty{}, nil
}

func trafficTail(b *testing.B, policy clusterpb.Cluster_LbPolicy) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var addrs []string
	var slow *delayedService
	for i := range 4 {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		srv := grpc.NewServer()
		svc := &delayedService{}
		if i == 0 {
			svc.delay = slowBackendDelay
			slow = svc
		}
		testgrpc.RegisterTestServiceServer(srv, svc)
		go srv.Serve(lis)
		defer srv.Stop()
		addrs = append(addrs, lis.Addr().String())
	}

	const target = "payments:8080"
	xds := xdstest.NewServer(b)
	cluster := xdstest.EDSCluster("payments", false)
	cluster.LbPolicy = policy
	xds.SetResources(b, "bench",
		[]types.Resource{xdstest.ClientListener(target, "rc")},
		[]types.Resource{xdstest.RouteConfig("rc", "*", xdsclient.ClusterWeight{Name: "payments", Weight: 1})},
		[]types.Resource{cluster},
		[]types.Resource{xdstest.Endpoints("payments", addrs...)})
	client, err := xdsclient.New(xds.Bootstrap("bench"))
	if err != nil {
		b.Fatal(err)
	}
	defer client.Close()
	builder := balancer.NewResolverBuilder(client)
	conn, err := grpc.NewClient("mesh:///"+target, append(builder.DialOptions(), grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	tc := testgrpc.NewTestServiceClient(conn)
	// Warm up every connection before measuring.
	for range 64 {
		if _, err := tc.EmptyCall(ctx, &testpb.Empty{}, grpc.WaitForReady(true)); err != nil {
			b.Fatal(err)
		}
	}

	const inFlight = 16
	latencies := make([]time.Duration, 0, b.N)
	slowBefore := slow.calls.Load()
	var next atomic.Int64
	results := make(chan []time.Duration, inFlight)
	b.ResetTimer()
	for range inFlight {
		go func() {
			var mine []time.Duration
			for next.Add(1) <= int64(b.N) {
				start := time.Now()
				if _, err := tc.EmptyCall(ctx, &testpb.Empty{}); err != nil {
					b.Error(err)
					break
				}
				mine = append(mine, time.Since(start))
			}
			results <- mine
		}()
	}
	for range inFlight {
		latencies = append(latencies, <-results...)
	}
	b.StopTimer()
	if len(latencies) == 0 {
		return
	}
	slices.Sort(latencies)
	quantile := func(q float64) float64 {
		return float64(latencies[int(q*float64(len(latencies)-1))].Microseconds())
	}
	b.ReportMetric(quantile(0.50), "p50-µs")
	b.ReportMetric(quantile(0.90), "p90-µs")
	b.ReportMetric(quantile(0.99), "p99-µs")
	b.ReportMetric(100*float64(slow.calls.Load()-slowBefore)/float64(len(latencies)), "slow-%")
}
