package balancer

import (
	"context"
	"errors"
	"math"
	"net/http"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc"
	grpcbalancer "google.golang.org/grpc/balancer"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"mesh/internal/routeinfo"
	"mesh/xdsclient"
)

func TestSelectVirtualHost(t *testing.T) {
	hosts := []xdsclient.VirtualHost{
		{Name: "universal", Domains: []string{"*"}},
		{Name: "exact", Domains: []string{"api.example.com", "api.example.com:8080"}},
		{Name: "suffix-short", Domains: []string{"*.com"}},
		{Name: "suffix-long", Domains: []string{"*.example.com"}},
		{Name: "suffix-dash", Domains: []string{"*-canary.example.com"}},
		{Name: "prefix-short", Domains: []string{"foo.*"}},
		{Name: "prefix-long", Domains: []string{"foo.bar.*"}},
	}
	tests := []struct {
		authority string
		want      string
	}{
		{"api.example.com", "exact"},
		{"API.Example.COM", "exact"},
		{"api.example.com:8080", "exact"},
		{"web.example.com", "suffix-long"},
		{"web-canary.example.com", "suffix-dash"},
		{"example.com", "suffix-short"}, // "*.example.com" needs a non-empty label
		{"foo.bar.com", "suffix-short"}, // suffix wildcards beat prefix wildcards
		{"foo.bar.net", "prefix-long"},  // the longest prefix wildcard wins
		{"foo.baz.net", "prefix-short"},
		{"payments.default.svc:80", "universal"},
		{"", "universal"},
	}
	for _, tt := range tests {
		vh := selectVirtualHost(hosts, tt.authority)
		if vh == nil || vh.Name != tt.want {
			got := "<nil>"
			if vh != nil {
				got = vh.Name
			}
			t.Errorf("selectVirtualHost(%q) = %s, want %s", tt.authority, got, tt.want)
		}
	}
	if vh := selectVirtualHost(hosts[1:2], "other.example.com"); vh != nil {
		t.Errorf("selectVirtualHost with no match = %q, want nil", vh.Name)
	}
}

func ptr[T any](v T) *T { return &v }

func routerFor(t testing.TB, routes ...xdsclient.Route) *Router {
	t.Helper()
	r, err := NewRouter(&xdsclient.RouteConfig{Name: "rc", VirtualHosts: []xdsclient.VirtualHost{
		{Name: "vh", Domains: []string{"svc"}, Routes: routes},
	}}, "svc")
	if err != nil {
		t.Fatalf("NewRouter: %v", err)
	}
	return r
}

func to(cluster string) xdsclient.RouteAction { return xdsclient.RouteAction{Cluster: cluster} }

func TestRouterMatch(t *testing.T) {
	r := routerFor(t,
		xdsclient.Route{Match: xdsclient.RouteMatch{Path: "/pkg.Svc/Exact", CaseSensitive: true}, Action: to("exact")},
		xdsclient.Route{Match: xdsclient.RouteMatch{Path: "/pkg.svc/fold"}, Action: to("fold")},
		xdsclient.Route{Match: xdsclient.RouteMatch{Regex: regexp.MustCompile(`^/pkg\.Svc/Re[0-9]+$`)}, Action: to("regex")},
		xdsclient.Route{Match: xdsclient.RouteMatch{Prefix: "/pkg.Svc/", CaseSensitive: true, Headers: []xdsclient.HeaderMatcher{
			{Name: "x-user", Match: &xdsclient.StringMatcher{Kind: xdsclient.MatchExact, Value: "canary"}},
		}}, Action: to("canary")},
		xdsclient.Route{Match: xdsclient.RouteMatch{Prefix: "/pkg.Svc/", CaseSensitive: true, Headers: []xdsclient.HeaderMatcher{
			{Name: "x-tier", Range: &xdsclient.Int64Range{Start: 1, End: 3}},
		}}, Action: to("tier")},
		xdsclient.Route{Match: xdsclient.RouteMatch{Prefix: "/pkg.Svc/", CaseSensitive: true, Headers: []xdsclient.HeaderMatcher{
			{Name: "x-debug", Present: ptr(true), Invert: true},
			{Name: "content-type", Match: &xdsclient.StringMatcher{Kind: xdsclient.MatchPrefix, Value: "application/grpc"}},
		}}, Action: to("no-debug")},
		xdsclient.Route{Match: xdsclient.RouteMatch{Prefix: "/never", FractionPerMillion: ptr[uint32](0)}, Action: to("never")},
		xdsclient.Route{Match: xdsclient.RouteMatch{Prefix: "/ALWAYS", FractionPerMillion: ptr[uint32](1_000_000)}, Action: to("always")},
		xdsclient.Route{Match: xdsclient.RouteMatch{Prefix: "/other.", CaseSensitive: true}, Action: to("other")},
	)
	tests := []struct {
		path    string
		md      metadata.MD
		want    string
		wantErr bool
	}{
		{path: "/pkg.Svc/Exact", want: "exact"},
		{path: "/pkg.svc/exact", md: metadata.Pairs("x-debug", "1"), wantErr: true},
		{path: "/PKG.SVC/FOLD", want: "fold"},
		{path: "/pkg.Svc/Re42", want: "regex"},
		{path: "/pkg.Svc/Re42x", want: "no-debug"},
		{path: "/pkg.Svc/M", md: metadata.Pairs("x-user", "canary"), want: "canary"},
		{path: "/pkg.Svc/M", md: metadata.Pairs("x-user", "canary", "x-user", "other"), want: "no-debug"}, // "canary,other"
		{path: "/pkg.Svc/M", md: metadata.Pairs("x-tier", "2"), want: "tier"},
		{path: "/pkg.Svc/M", md: metadata.Pairs("x-tier", "3", "x-debug", "y"), wantErr: true},
		{path: "/pkg.Svc/M", want: "no-debug"},
		{path: "/never/x", wantErr: true},
		{path: "/always/x", want: "always"},
		{path: "/other.Svc/M", want: "other"},
		{path: "/Other.Svc/M", wantErr: true},
	}
	for _, tt := range tests {
		cluster, route, err := r.Pick(tt.path, MetadataHeaders(tt.md))
		if tt.wantErr {
			if !errors.Is(err, ErrNoRoute) || !strings.Contains(err.Error(), `no route matched `+tt.path+` in route config "rc"`) {
				t.Errorf("Pick(%q, %v) = %q, %v; want a no-route error", tt.path, tt.md, cluster, err)
			}
			continue
		}
		if err != nil || cluster != tt.want || route == nil || route.Action.Cluster != tt.want {
			t.Errorf("Pick(%q, %v) = %q, %v; want %q", tt.path, tt.md, cluster, err, tt.want)
		}
	}
	if !r.needsHeaders {
		t.Error("NeedsHeaders() = false for routes with header matchers")
	}
}

func TestRouterHTTPHeaders(t *testing.T) {
	r := routerFor(t,
		xdsclient.Route{Match: xdsclient.RouteMatch{Prefix: "/", Headers: []xdsclient.HeaderMatcher{
			{Name: "x-user", Match: &xdsclient.StringMatcher{Kind: xdsclient.MatchExact, Value: "canary"}},
		}}, Action: to("canary")},
		xdsclient.Route{Match: xdsclient.RouteMatch{Prefix: "/"}, Action: to("stable")},
	)
	h := http.Header{}
	h.Set("X-User", "canary")
	if got, _, err := r.Pick("/index.html", HTTPHeaders(h)); err != nil || got != "canary" {
		t.Errorf("Pick with X-User: canary = %q, %v; want canary", got, err)
	}
	if got, _, err := r.Pick("/index.html", nil); err != nil || got != "stable" {
		t.Errorf("Pick without headers = %q, %v; want stable", got, err)
	}
}

func TestNewRouterErrors(t *testing.T) {
	tests := []struct {
		name string
		rc   *xdsclient.RouteConfig
		want string
	}{
		{"nil", nil, "route config is nil"},
		{"no vhost", &xdsclient.RouteConfig{Name: "rc", VirtualHosts: []xdsclient.VirtualHost{{Name: "vh", Domains: []string{"other"}}}},
			`route config "rc": no virtual host matches authority "svc"`},
		{"zero weights", &xdsclient.RouteConfig{Name: "rc", VirtualHosts: []xdsclient.VirtualHost{{Name: "vh", Domains: []string{"*"}, Routes: []xdsclient.Route{
			{Action: xdsclient.RouteAction{WeightedClusters: []xdsclient.ClusterWeight{{Name: "a"}, {Name: "b"}}}},
		}}}}, `route config "rc" virtual host "vh" routes[0]: action.weighted_clusters: all weights are 0`},
		{"no cluster", &xdsclient.RouteConfig{Name: "rc", VirtualHosts: []xdsclient.VirtualHost{{Name: "vh", Domains: []string{"*"}, Routes: []xdsclient.Route{
			{}, {},
		}}}}, `route config "rc" virtual host "vh" routes[0]: action: no cluster`},
	}
	for _, tt := range tests {
		_, err := NewRouter(tt.rc, "svc")
		if err == nil || err.Error() != tt.want {
			t.Errorf("%s: NewRouter error = %v, want %q", tt.name, err, tt.want)
		}
	}
}

func TestRouterWeights(t *testing.T) {
	r := routerFor(t, xdsclient.Route{Match: xdsclient.RouteMatch{Prefix: "/"}, Action: xdsclient.RouteAction{WeightedClusters: []xdsclient.ClusterWeight{
		{Name: "zero-first", Weight: 0}, {Name: "a", Weight: 70}, {Name: "zero-mid", Weight: 0}, {Name: "b", Weight: 30}, {Name: "zero-last", Weight: 0},
	}}})
	if got, want := strings.Join(r.clusters, ","), "zero-first,a,zero-mid,b,zero-last"; got != want {
		t.Errorf("Clusters() = %s, want %s", got, want)
	}
	const n = 100000
	counts := map[string]int{}
	for range n {
		c, _, err := r.Pick("/x", nil)
		if err != nil {
			t.Fatal(err)
		}
		counts[c]++
	}
	p := 0.7
	sigma := math.Sqrt(n * p * (1 - p))
	if d := math.Abs(float64(counts["a"]) - n*p); d > 5*sigma {
		t.Errorf("a got %d of %d, want %.0f ± %.0f", counts["a"], n, n*p, 5*sigma)
	}
	for _, zero := range []string{"zero-first", "zero-mid", "zero-last"} {
		if counts[zero] != 0 {
			t.Errorf("weight-0 leg %s got %d picks, want 0", zero, counts[zero])
		}
	}
}

func benchRouter(tb testing.TB) *Router {
	return routerFor(tb,
		xdsclient.Route{Match: xdsclient.RouteMatch{Path: "/pkg.Admin/Reset", CaseSensitive: true}, Action: to("admin")},
		xdsclient.Route{Match: xdsclient.RouteMatch{Prefix: "/pkg.Payments/", CaseSensitive: true}, Action: xdsclient.RouteAction{
			WeightedClusters: []xdsclient.ClusterWeight{{Name: "v1", Weight: 90}, {Name: "v2", Weight: 10}, {Name: "v3", Weight: 0}},
		}},
		xdsclient.Route{Match: xdsclient.RouteMatch{Prefix: "/"}, Action: to("default")},
	)
}

func TestRouterPickDoesNotAllocate(t *testing.T) {
	r := benchRouter(t)
	md := MetadataHeaders(metadata.Pairs("x-user", "u"))
	allocs := testing.AllocsPerRun(1000, func() {
		if _, _, err := r.Pick("/pkg.Payments/Charge", md); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("Router.Pick allocates %.1f times per call, want 0", allocs)
	}

	headerRouter := routerFor(t, xdsclient.Route{Match: xdsclient.RouteMatch{Prefix: "/", Headers: []xdsclient.HeaderMatcher{
		{Name: "x-user", Match: &xdsclient.StringMatcher{Kind: xdsclient.MatchExact, Value: "u"}},
	}}, Action: to("a")})
	allocs = testing.AllocsPerRun(1000, func() {
		if _, _, err := headerRouter.Pick("/pkg.Payments/Charge", md); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("Router.Pick with a header matcher allocates %.1f times per call, want 0", allocs)
	}
}

// fakeSubConn stands in for a gRPC SubConn in picker tests that never
// connect; calling any method panics.
type fakeSubConn struct{ grpcbalancer.SubConn }

func benchPicker(tb testing.TB, policy xdsclient.LBPolicy) *picker {
	r := benchRouter(tb)
	t := &grpcTable{router: r, clusters: make([]routeCluster[grpcPick], len(r.clusters))}
	for i := range t.clusters {
		cs := newClusterState(r.clusters[i], retryBudget{percent: 20, min: 3})
		cs.maxRequests.Store(1 << 30)
		var active [2]atomic.Int64
		done := func(grpcbalancer.DoneInfo) { cs.release() }
		t.clusters[i] = routeCluster[grpcPick]{
			name: r.clusters[i],
			ready: []grpcPick{
				{sc: &fakeSubConn{}, done: done, route: routeinfo.New(r.clusters[i], "10.0.0.1:80")},
				{sc: &fakeSubConn{}, done: done, route: routeinfo.New(r.clusters[i], "10.0.0.2:80")},
			},
			chooser: newEndpointChooser(policy, []string{"10.0.0.1:80", "10.0.0.2:80"}, []*atomic.Int64{&active[0], &active[1]}),
			state:   cs,
		}
	}
	p := &picker{}
	p.table.Store(t)
	return p
}

func TestPickerPickDoesNotAllocate(t *testing.T) {
	for _, policy := range []xdsclient.LBPolicy{xdsclient.LBRoundRobin, xdsclient.LBLeastRequest, xdsclient.LBRingHash} {
		p := benchPicker(t, policy)
		// As the client interceptors call it: with the call's route
		// decided, and Done called.
		// And with telemetry's slot for the route, which the pick fills.
		slot := &routeinfo.Slot{}
		dc, err := decide(routeinfo.WithSlot(t.Context(), slot), p.table.Load(), "/pkg.Payments/Charge")
		if err != nil || dc == nil {
			t.Fatalf("decide = %v, %v", dc, err)
		}
		info := grpcbalancer.PickInfo{FullMethodName: "/pkg.Payments/Charge", Ctx: dc}
		allocs := testing.AllocsPerRun(1000, func() {
			res, err := p.Pick(info)
			if err != nil || res.SubConn == nil {
				t.Fatalf("Pick = %v, %v", res, err)
			}
			res.Done(grpcbalancer.DoneInfo{})
		})
		if allocs != 0 {
			t.Errorf("%s: picker.Pick allocates %.1f times per call, want 0", policy, allocs)
		}
		if got := slot.Load(); got == nil || got.Endpoint == "" || got.Cluster == "" {
			t.Errorf("%s: the pick left no route for telemetry: %+v", policy, got)
		}
	}
}

func BenchmarkRouterPick(b *testing.B) {
	r := benchRouter(b)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, _, err := r.Pick("/pkg.Payments/Charge", nil); err != nil {
				b.Fatal(err)
			}
		}
	})
}

func BenchmarkPickerPick(b *testing.B) {
	p := benchPicker(b, xdsclient.LBRoundRobin)
	info := grpcbalancer.PickInfo{FullMethodName: "/pkg.Payments/Charge", Ctx: b.Context()}
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := p.Pick(info); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// TestRoutedCallAllocationBudget keeps what routing adds to a gRPC call,
// interceptor and pick together, at one allocation: the context that
// carries the call's decision.
func TestRoutedCallAllocationBudget(t *testing.T) {
	p := benchPicker(t, xdsclient.LBRoundRobin)
	link := newChannelLink()
	link.store(p.table.Load())
	xds := newFakeXDS()
	defer xds.Close()
	b := NewResolverBuilder(xds)
	cc, err := grpc.NewClient("mesh:///"+testTarget, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	intercept := b.unaryInterceptor(link)
	invoker := func(ctx context.Context, method string, _, _ any, _ *grpc.ClientConn, _ ...grpc.CallOption) error {
		res, err := p.Pick(grpcbalancer.PickInfo{FullMethodName: method, Ctx: ctx})
		if err != nil {
			return err
		}
		res.Done(grpcbalancer.DoneInfo{})
		return nil
	}
	ctx := t.Context()
	allocs := testing.AllocsPerRun(1000, func() {
		if err := intercept(ctx, "/pkg.Payments/Charge", nil, nil, cc, invoker); err != nil {
			t.Fatal(err)
		}
	})
	if allocs > 1 {
		t.Errorf("a routed call allocates %.1f times in the balancer, want at most 1 (its decision)", allocs)
	}
}
