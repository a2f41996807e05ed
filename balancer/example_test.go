package balancer_test

import (
	"fmt"
	"log/slog"
	"net/http"

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

func ExampleSelectVirtualHost() {
	hosts := []xdsclient.VirtualHost{
		{Name: "catch-all", Domains: []string{"*"}},
		{Name: "cluster-local", Domains: []string{"*.svc.cluster.local"}},
		{Name: "payments", Domains: []string{"payments.default.svc.cluster.local"}},
	}
	for _, authority := range []string{"payments.default.svc.cluster.local", "orders.default.svc.cluster.local", "example.com"} {
		fmt.Println(authority, "->", balancer.SelectVirtualHost(hosts, authority).Name)
	}
	// Output:
	// payments.default.svc.cluster.local -> payments
	// orders.default.svc.cluster.local -> cluster-local
	// example.com -> catch-all
}

func ExampleNewResolverBuilder() {
	var client balancer.XDSClient // e.g. an *xdsclient.Client
	conn, err := grpc.NewClient("mesh:///payments.default.svc.cluster.local:8080",
		grpc.WithResolvers(balancer.NewResolverBuilder(client, balancer.WithLogger(slog.Default()))),
		// Real deployments use the mesh transport credentials, which read
		// each SubConn's handshake.Info to do the cluster's mTLS.
		grpc.WithTransportCredentials(insecure.NewCredentials()),
	)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer conn.Close()
}
