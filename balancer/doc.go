// Package balancer routes requests the way a sidecar would: route match ->
// weighted cluster -> endpoint, from xDS resources.
//
// Quick start, for a gRPC channel:
//
//	builder := balancer.NewResolverBuilder(xdsClient, balancer.WithLogger(logger))
//	conn, err := grpc.NewClient("mesh:///payments.default.svc.cluster.local:8080",
//		grpc.WithResolvers(builder),
//		grpc.WithTransportCredentials(creds), // reads handshake.Info for per-cluster mTLS
//	)
//
// and for anything else (for example an http.RoundTripper), route with a
// Router built from a route config:
//
//	router, err := balancer.NewRouter(routeConfig, "payments:8080")
//	cluster, route, err := router.Pick(req.URL.Path, balancer.HTTPHeaders(req.Header))
//
// The resolver ("mesh" scheme, never registered globally) watches the
// listener named after the target, its route config, and every cluster and
// endpoints resource the chosen virtual host's routes name, and hands the
// channel one immutable snapshot. The LB policy "mesh_router" (the one global
// registration of this package) keeps a SubConn per cluster endpoint, tagged
// with handshake.Info so the transport credentials do each cluster's mTLS,
// and publishes routing tables with one atomic store. Each pick does one
// atomic load, a route match, a weighted cluster pick and a round-robin
// endpoint pick, without locks or allocations.
//
// Config changes never fail an RPC: a table that sends traffic to a cluster
// with no ready connection waits (up to WithPublishTimeout) while the old
// table serves, and connections no longer used drain for WithDrainGrace
// before they are shut down.
//
// Endpoint selection is round robin over the ready endpoints of the most
// preferred priority that has usable endpoints; locality and endpoint
// weights, outlier detection, retries and circuit breaking are not applied
// yet.
package balancer
