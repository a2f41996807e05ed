package balancer_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"mesh/balancer"
	"mesh/xdsclient"
)

func exampleRouteConfig() *xdsclient.RouteConfig {
	return &xdsclient.RouteConfig{
		Name: "payments-routes",
		VirtualHosts: []xdsclient.VirtualHost{{
			Name:    "payments",
			Domains: []string{"payments.default.svc.cluster.local", "payments:8080"},
			Routes: []xdsclient.Route{
				{
					Name: "canary-users",
					Match: xdsclient.RouteMatch{Prefix: "/payments.Payments/", CaseSensitive: true, Headers: []xdsclient.HeaderMatcher{
						{Name: "x-canary", Match: &xdsclient.StringMatcher{Kind: xdsclient.MatchExact, Value: "yes"}},
					}},
					Action: xdsclient.RouteAction{Cluster: "outbound|8080|v2|payments.default.svc.cluster.local"},
				},
				{
					Name:  "payments",
					Match: xdsclient.RouteMatch{Prefix: "/payments.Payments/", CaseSensitive: true},
					Action: xdsclient.RouteAction{WeightedClusters: []xdsclient.ClusterWeight{
						{Name: "outbound|8080|v1|payments.default.svc.cluster.local", Weight: 100},
						{Name: "outbound|8080|v2|payments.default.svc.cluster.local", Weight: 0},
					}},
				},
			},
		}},
	}
}

func ExampleRouter_Pick() {
	router, err := balancer.NewRouter(exampleRouteConfig(), "payments:8080")
	if err != nil {
		fmt.Println(err)
		return
	}
	// gRPC metadata...
	md := metadata.Pairs("x-canary", "yes")
	cluster, route, _ := router.Pick("/payments.Payments/Charge", balancer.MetadataHeaders(md))
	fmt.Println(route.Name, cluster)

	// ...or net/http headers.
	cluster, route, _ = router.Pick("/payments.Payments/Charge", balancer.HTTPHeaders(http.Header{}))
	fmt.Println(route.Name, cluster)

	_, _, err = router.Pick("/orders.Orders/Get", nil)
	fmt.Println(err)
	// Output:
	// canary-users outbound|8080|v2|payments.default.svc.cluster.local
	// payments outbound|8080|v1|payments.default.svc.cluster.local
	// no route matched /orders.Orders/Get in route config "payments-routes"
}

func ExampleNewResolverBuilder() {
	var client balancer.XDSClient // e.g. an *xdsclient.Client
	conn, err := grpc.NewClient("mesh:///payments.default.svc.cluster.local:8080",
		grpc.WithResolvers(balancer.NewResolverBuilder(client, balancer.WithLogger(slog.Default()))),
		// Real deployments use the mesh transport credentials, which know
		// each SubConn's cluster and do its mTLS.
		grpc.WithTransportCredentials(insecure.NewCredentials()),
	)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer conn.Close()
}

// staticXDS serves a fixed set of resources: just enough of an XDSClient
// for an example. Real programs pass an *xdsclient.Client.
type staticXDS struct {
	listeners map[string]*xdsclient.Listener
	routes    map[string]*xdsclient.RouteConfig
	clusters  map[string]*xdsclient.Cluster
	endpoints map[string]*xdsclient.Endpoints
}

func deliver[T any](m map[string]T, name string, fn func(xdsclient.Event[T])) func() {
	if r, ok := m[name]; ok {
		fn(xdsclient.Event[T]{Resource: r})
	} else {
		fn(xdsclient.Event[T]{NotFound: true})
	}
	return func() {}
}

func (s *staticXDS) WatchListener(name string, fn func(xdsclient.Event[*xdsclient.Listener])) func() {
	return deliver(s.listeners, name, fn)
}

func (s *staticXDS) WatchRouteConfig(name string, fn func(xdsclient.Event[*xdsclient.RouteConfig])) func() {
	return deliver(s.routes, name, fn)
}

func (s *staticXDS) WatchCluster(name string, fn func(xdsclient.Event[*xdsclient.Cluster])) func() {
	return deliver(s.clusters, name, fn)
}

func (s *staticXDS) WatchEndpoints(name string, fn func(xdsclient.Event[*xdsclient.Endpoints])) func() {
	return deliver(s.endpoints, name, fn)
}

func ExampleNewRoundTripper() {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "v1 served %s%s", r.Host, r.URL.Path)
	}))
	defer backend.Close()

	const cluster = "outbound|8080|v1|payments.default.svc.cluster.local"
	xds := &staticXDS{
		listeners: map[string]*xdsclient.Listener{"payments:8080": {
			Name: "payments:8080", HTTP: &xdsclient.HTTPConnectionManager{RouteConfigName: "payments-routes"}}},
		routes:   map[string]*xdsclient.RouteConfig{"payments-routes": exampleRouteConfig()},
		clusters: map[string]*xdsclient.Cluster{cluster: {Name: cluster, LBPolicy: xdsclient.LBRoundRobin, MaxRequests: 1024}},
		endpoints: map[string]*xdsclient.Endpoints{cluster: {Name: cluster, Localities: []xdsclient.LocalityEndpoints{{
			Endpoints: []xdsclient.Endpoint{{Address: backend.Listener.Addr().String()}}}}}},
	}
	// The v2 cluster is not found: only requests routed to it fail.

	// Plaintext here; the mesh dials each cluster's mTLS.
	dial := func(ctx context.Context, network, addr, _ string, _ *xdsclient.UpstreamTLS) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}
	rt := balancer.NewRoundTripper(xds, dial)
	defer rt.Close()
	client := &http.Client{Transport: rt}

	resp, err := client.Get("http://payments:8080/payments.Payments/Charge")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	fmt.Println(resp.StatusCode, string(body))

	_, err = client.Get("http://payments:8080/orders")
	fmt.Println(errors.Is(err, balancer.ErrNoRoute))
	// Output:
	// 200 v1 served payments:8080/payments.Payments/Charge
	// true
}

func ExampleResolverBuilder_DialOptions() {
	var client balancer.XDSClient // e.g. an *xdsclient.Client
	builder := balancer.NewResolverBuilder(client)
	// The resolver plus the interceptors that apply route timeouts and retries.
	opts := append(builder.DialOptions(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	conn, err := grpc.NewClient("mesh:///payments.default.svc.cluster.local:8080", opts...)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer conn.Close()
}

// A route's fault filter override (Istio's VirtualService fault) makes the
// RoundTripper answer without sending the request.
func ExampleNewRoundTripper_faultInjection() {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprint(w, "served")
	}))
	defer backend.Close()

	const cluster = "outbound|8080||payments.default.svc.cluster.local"
	abort := &xdsclient.FaultInjection{Abort: &xdsclient.FaultAbort{HTTPStatus: 503, PerMillion: 1_000_000, Denominator: 100}}
	xds := &staticXDS{
		listeners: map[string]*xdsclient.Listener{"payments:8080": {Name: "payments:8080", HTTP: &xdsclient.HTTPConnectionManager{
			RouteConfigName: "routes",
			HTTPFilters: []xdsclient.HTTPFilter{
				{Name: "envoy.filters.http.fault", TypeURL: xdsclient.TypeURLFault, Config: &xdsclient.FaultInjection{}},
				{Name: "envoy.filters.http.router"},
			}}}},
		routes: map[string]*xdsclient.RouteConfig{"routes": {Name: "routes", VirtualHosts: []xdsclient.VirtualHost{{
			Domains: []string{"*"},
			Routes: []xdsclient.Route{
				{Match: xdsclient.RouteMatch{Prefix: "/broken", CaseSensitive: true}, Action: xdsclient.RouteAction{Cluster: cluster},
					FilterOverrides: map[string]any{"envoy.filters.http.fault": abort}},
				{Action: xdsclient.RouteAction{Cluster: cluster}},
			}}}}},
		clusters: map[string]*xdsclient.Cluster{cluster: {Name: cluster, LBPolicy: xdsclient.LBRoundRobin}},
		endpoints: map[string]*xdsclient.Endpoints{cluster: {Name: cluster, Localities: []xdsclient.LocalityEndpoints{{
			Endpoints: []xdsclient.Endpoint{{Address: backend.Listener.Addr().String()}}}}}},
	}
	dial := func(ctx context.Context, network, addr, _ string, _ *xdsclient.UpstreamTLS) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}
	rt := balancer.NewRoundTripper(xds, dial)
	defer rt.Close()
	client := &http.Client{Transport: rt}
	for _, path := range []string{"/ok", "/broken"} {
		resp, err := client.Get("http://payments:8080" + path)
		if err != nil {
			fmt.Println(err)
			return
		}
		resp.Body.Close()
		fmt.Println(path, resp.StatusCode)
	}
	// Output:
	// /ok 200
	// /broken 503
}

func ExampleRoundTripper_ClusterStates() {
	backend := httptest.NewServer(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {}))
	defer backend.Close()

	const cluster = "outbound|8080|v1|payments.default.svc.cluster.local"
	xds := &staticXDS{
		listeners: map[string]*xdsclient.Listener{"payments:8080": {
			Name: "payments:8080", HTTP: &xdsclient.HTTPConnectionManager{RouteConfigName: "payments-routes"}}},
		routes:   map[string]*xdsclient.RouteConfig{"payments-routes": exampleRouteConfig()},
		clusters: map[string]*xdsclient.Cluster{cluster: {Name: cluster, LBPolicy: xdsclient.LBRoundRobin}},
		endpoints: map[string]*xdsclient.Endpoints{cluster: {Name: cluster, Localities: []xdsclient.LocalityEndpoints{{
			Locality:  xdsclient.Locality{Region: "eu-west1", Zone: "eu-west1-b"},
			Endpoints: []xdsclient.Endpoint{{Address: backend.Listener.Addr().String(), Weight: 10}}}}}},
	}
	dial := func(ctx context.Context, network, addr, _ string, _ *xdsclient.UpstreamTLS) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}
	rt := balancer.NewRoundTripper(xds, dial)
	defer rt.Close()
	resp, err := (&http.Client{Transport: rt}).Get("http://payments:8080/payments.Payments/Charge")
	if err != nil {
		fmt.Println(err)
		return
	}
	resp.Body.Close()

	// What an admin page shows: the v2 cluster has no resource, so no
	// endpoints.
	for _, c := range rt.ClusterStates() {
		fmt.Println(c.Channel, c.Name, "in flight:", c.InFlight)
		for _, ep := range c.Endpoints {
			fmt.Println("  ", ep.Locality, ep.Weight, ep.Health, ep.Ejected)
		}
	}
	// Output:
	// payments:8080 outbound|8080|v1|payments.default.svc.cluster.local in flight: 0
	//    eu-west1/eu-west1-b 10 READY false
	// payments:8080 outbound|8080|v2|payments.default.svc.cluster.local in flight: 0
}
