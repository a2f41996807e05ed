package balancer

import (
	"errors"
	"net/http"
	"strings"
	"testing"

	routepb "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"mesh/internal/testutil"
	"mesh/xdsclient"
	"mesh/xdsclient/xdstest"
)

// headerRouted is a router whose first route takes its cluster from
// "x-cluster" when that header is present; the second sends everything
// else to "a", with "b" a weight-0 leg.
func headerRoutedRouter(t testing.TB) *Router {
	present := true
	return routerFor(t,
		xdsclient.Route{Name: "by-header", Match: xdsclient.RouteMatch{Prefix: "/", Headers: []xdsclient.HeaderMatcher{{Name: "x-cluster", Present: &present}}},
			Action: xdsclient.RouteAction{ClusterHeader: "X-Cluster"}},
		xdsclient.Route{Name: "default", Match: xdsclient.RouteMatch{Prefix: "/"},
			Action: xdsclient.RouteAction{WeightedClusters: []xdsclient.ClusterWeight{{Name: "a", Weight: 1}, {Name: "b", Weight: 0}}}},
	)
}

func TestRouterClusterHeader(t *testing.T) {
	r := headerRoutedRouter(t)
	if !r.needsHeaders {
		t.Error("NeedsHeaders is false for a router with a cluster_header route")
	}
	for _, tc := range []struct {
		name    string
		headers Headers
		want    string
	}{
		{"no header", MetadataHeaders(nil), "a"},
		{"metadata names a weight-0 leg", MetadataHeaders(metadata.Pairs("x-cluster", "b")), "b"},
		{"first of several values", MetadataHeaders(metadata.Pairs("x-cluster", "a", "x-cluster", "b")), "a"},
		{"net/http header", HTTPHeaders(http.Header{"X-Cluster": {"b"}}), "b"},
	} {
		cluster, route, err := r.Pick("/svc/Method", tc.headers)
		if err != nil || cluster != tc.want {
			t.Errorf("%s: Pick = %q, %v; want %q", tc.name, cluster, err, tc.want)
			continue
		}
		if tc.want == "b" && route.Name != "by-header" {
			t.Errorf("%s: route %q, want by-header", tc.name, route.Name)
		}
	}

	_, _, err := r.Pick("/svc/Method", MetadataHeaders(metadata.Pairs("x-cluster", "payments-v3")))
	if !errors.Is(err, ErrUnroutableCluster) || !strings.Contains(err.Error(), `route "by-header"`) ||
		!strings.Contains(err.Error(), `cluster_header "x-cluster" names cluster "payments-v3"`) {
		t.Errorf("unknown cluster: %v, want ErrUnroutableCluster naming the route, header and cluster", err)
	}

	// A route that only routes by header fails requests without it.
	only := routerFor(t, xdsclient.Route{Match: xdsclient.RouteMatch{Prefix: "/"}, Action: xdsclient.RouteAction{ClusterHeader: "x-cluster"}})
	if n := len(only.clusters); n != 0 {
		t.Errorf("cluster_header-only router knows %d clusters, want 0", n)
	}
	_, _, err = only.Pick("/svc/Method", nil)
	if !errors.Is(err, ErrUnroutableCluster) || !strings.Contains(err.Error(), "header missing") {
		t.Errorf("missing header: %v, want ErrUnroutableCluster saying the header is missing", err)
	}
}

func TestRouterClusterHeaderPickDoesNotAllocate(t *testing.T) {
	// net/http header matchers canonicalize names, which allocates (see
	// HTTPHeaders); the cluster header lookup itself does not, so the
	// net/http case uses a route without header matchers.
	byHeaderOnly := routerFor(t,
		xdsclient.Route{Match: xdsclient.RouteMatch{Prefix: "/"}, Action: xdsclient.RouteAction{ClusterHeader: "x-cluster"}},
		xdsclient.Route{Match: xdsclient.RouteMatch{Prefix: "/never"}, Action: to("b")},
	)
	for name, tc := range map[string]struct {
		r       *Router
		headers Headers
	}{
		"metadata": {headerRoutedRouter(t), MetadataHeaders(metadata.Pairs("x-cluster", "b"))},
		"net/http": {byHeaderOnly, HTTPHeaders(http.Header{"X-Cluster": {"b"}})},
	} {
		r, headers := tc.r, tc.headers
		allocs := testing.AllocsPerRun(1000, func() {
			if c, _, err := r.Pick("/svc/Method", headers); err != nil || c != "b" {
				t.Fatalf("Pick = %q, %v", c, err)
			}
		})
		if allocs != 0 {
			t.Errorf("%s: Pick by cluster header allocates %.1f times per call, want 0", name, allocs)
		}
	}
}

// clusterHeaderResources is, for listener target, a route config whose
// first route sends requests carrying "X-Cluster" to the cluster it names
// and whose second sends the rest to clusterA (clusterB is a weight-0
// leg), as Envoy protos from a real control plane.
func clusterHeaderResources(target, rcName, clusterA, addrA, clusterB, addrB string) (l, r, c, e []types.Resource) {
	rc := xdstest.RouteConfig(rcName, "*", xdsclient.ClusterWeight{Name: clusterA, Weight: 100}, xdsclient.ClusterWeight{Name: clusterB, Weight: 0})
	byHeader := &routepb.Route{
		Name: "by-header",
		Match: &routepb.RouteMatch{
			PathSpecifier: &routepb.RouteMatch_Prefix{Prefix: ""},
			Headers:       []*routepb.HeaderMatcher{{Name: "x-cluster", HeaderMatchSpecifier: &routepb.HeaderMatcher_PresentMatch{PresentMatch: true}}},
		},
		Action: &routepb.Route_Route{Route: &routepb.RouteAction{ClusterSpecifier: &routepb.RouteAction_ClusterHeader{ClusterHeader: "X-Cluster"}}},
	}
	vh := rc.VirtualHosts[0]
	vh.Routes = append([]*routepb.Route{byHeader}, vh.Routes...)
	return []types.Resource{xdstest.ClientListener(target, rcName)},
		[]types.Resource{rc},
		[]types.Resource{xdstest.EDSCluster(clusterA, false), xdstest.EDSCluster(clusterB, false)},
		[]types.Resource{xdstest.Endpoints(clusterA, addrA), xdstest.Endpoints(clusterB, addrB)}
}

func TestClusterHeaderFromAControlPlane(t *testing.T) {
	checkNoLeaks(t)
	ctx := testutil.Context(t)
	srv, client := realXDS(t)

	grpcA, grpcB := startBackend(t, "grpc-a"), startBackend(t, "grpc-b")
	httpA := startHTTPBackend(t, "http-a", http1Plain, nil)
	httpB := startHTTPBackend(t, "http-b", http1Plain, nil)
	const webTarget = "web.test:80"
	l1, r1, c1, e1 := clusterHeaderResources(testTarget, "rc-grpc", "ga", grpcA.addr, "gb", grpcB.addr)
	l2, r2, c2, e2 := clusterHeaderResources(webTarget, "rc-http", "ha", httpA.addr, "hb", httpB.addr)
	srv.SetResources(t, "node-1", append(l1, l2...), append(r1, r2...), append(c1, c2...), append(e1, e2...))

	t.Run("gRPC", func(t *testing.T) {
		builder := NewResolverBuilder(client)
		conn, err := grpc.NewClient("mesh:///"+testTarget, append(builder.DialOptions(), grpc.WithTransportCredentials(insecure.NewCredentials()))...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = conn.Close() })
		e := &testEnv{conn: conn, client: testgrpc.NewTestServiceClient(conn)}
		callWith := func(md ...string) (string, error) {
			return e.call(metadata.AppendToOutgoingContext(ctx, md...))
		}
		if got, err := e.call(ctx); err != nil || got != "grpc-a" {
			t.Fatalf("RPC without x-cluster: %q, %v; want grpc-a", got, err)
		}
		for range 5 {
			if got, err := callWith("x-cluster", "gb"); err != nil || got != "grpc-b" {
				t.Fatalf("RPC with x-cluster: gb: %q, %v; want grpc-b", got, err)
			}
		}
		_, err = callWith("x-cluster", "gc")
		if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), `"x-cluster"`) || !strings.Contains(err.Error(), `"gc"`) {
			t.Fatalf("RPC naming an unknown cluster: %v, want UNAVAILABLE naming the header and cluster", err)
		}
		// The channel keeps working after a failed pick.
		if _, err := e.client.EmptyCall(ctx, &testpb.Empty{}); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("HTTP", func(t *testing.T) {
		rt := NewRoundTripper(client, (&testDialer{}).dial)
		t.Cleanup(func() { _ = rt.Close() })
		get := func(cluster string) (*http.Response, error) {
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+webTarget+"/x", nil)
			if err != nil {
				t.Fatal(err)
			}
			if cluster != "" {
				req.Header.Set("X-Cluster", cluster)
			}
			resp, err := (&http.Client{Transport: rt}).Do(req)
			if err == nil {
				_ = resp.Body.Close()
			}
			return resp, err
		}
		for cluster, want := range map[string]string{"": "http-a", "hb": "http-b", "ha": "http-a"} {
			resp, err := get(cluster)
			if err != nil || resp.Header.Get("backend") != want {
				t.Fatalf("GET with X-Cluster %q: %v %v, want a response from %s", cluster, resp, err, want)
			}
		}
		_, err := get("hc")
		var unavailable *UnavailableError
		if !errors.As(err, &unavailable) || unavailable.StatusCode() != http.StatusServiceUnavailable || !errors.Is(err, ErrUnroutableCluster) ||
			!strings.Contains(err.Error(), `"x-cluster"`) || !strings.Contains(err.Error(), `"hc"`) {
			t.Fatalf("GET naming an unknown cluster: %v, want a 503 UnavailableError naming the header and cluster", err)
		}
	})
}

func TestClusterHeaderMakesEveryClusterCarryTraffic(t *testing.T) {
	r := headerRoutedRouter(t)
	for i, name := range r.clusters {
		if !r.carriesTraffic(i) {
			t.Errorf("cluster %q: carriesTraffic false; a cluster_header route may send to it", name)
		}
	}
	snap := &snapshot{router: r, clusters: map[string]*xdsclient.Cluster{"a": testCluster("a"), "b": testCluster("b")}}
	p := newPlan(snap, tlsCache{})
	for _, pc := range p.clusters {
		if !pc.carriesTraffic {
			t.Errorf("plan cluster %q: carriesTraffic false, want true", pc.name)
		}
	}
}
