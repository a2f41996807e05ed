// Package balancer routes requests the way a sidecar would: route match ->
// weighted cluster -> endpoint, from xDS resources, with the routes'
// timeouts and retries and the clusters' circuit breakers.
//
// Quick start, for a gRPC channel:
//
//	builder := balancer.NewResolverBuilder(xdsClient, balancer.WithLogger(logger))
//	opts := append(builder.DialOptions(), // resolver + timeout/retry interceptors
//		grpc.WithTransportCredentials(creds)) // reads handshake.Info for per-cluster mTLS
//	conn, err := grpc.NewClient("mesh:///payments.default.svc.cluster.local:8080", opts...)
//
// for net/http:
//
//	rt := balancer.NewRoundTripper(xdsClient, dialTLS) // dialTLS does each cluster's mTLS
//	defer rt.Close()
//	client := &http.Client{Transport: rt}
//	resp, err := client.Get("http://payments.default.svc.cluster.local:8080/charge")
//
// and for anything else, route with a Router built from a route config:
//
//	router, err := balancer.NewRouter(routeConfig, "payments:8080")
//	cluster, route, err := router.Pick(req.URL.Path, balancer.HTTPHeaders(req.Header))
//
// The resolver ("mesh" scheme, never registered globally) and the
// RoundTripper share one aggregation of xDS watches: the listener named
// after the target, its route config, and every cluster and endpoints
// resource the chosen virtual host's routes name, turned into one immutable
// snapshot. The LB policy "mesh_router" (the one global registration of
// this package) keeps a SubConn per cluster endpoint, tagged with
// handshake.Info so the transport credentials do each cluster's mTLS; the
// RoundTripper keeps an http.Transport per cluster endpoint, dialled with
// the caller's DialTLSFunc. Both publish routing tables with one atomic
// store; each request does one atomic load, a route match, a weighted
// cluster pick and an endpoint pick, and the gRPC picker does so without
// locks or allocations.
//
// Config changes never fail a request: a table that sends traffic to a
// cluster with no ready connection (gRPC) or no usable endpoint (HTTP)
// waits (up to WithPublishTimeout) while the old table serves, and
// connections no longer used drain for WithDrainGrace before they close.
//
// What the xDS resources ask for and where it is applied:
//
//   - route timeout (max_stream_duration, gRFC A31): the RPC's deadline
//     becomes the earlier of the caller's and the route's (interceptors);
//     an HTTP request's context gets it, reading the body included.
//   - retry policy (gRFC A44): gRPC status codes (cancelled,
//     deadline-exceeded, internal, resource-exhausted, unavailable) or HTTP
//     conditions (5xx, gateway-error, reset, connect-failure,
//     retriable-status-codes), num_retries, exponential backoff with
//     jitter; concurrent retries per cluster stay within a budget
//     (WithRetryBudget). gRPC streams are retried only before any response
//     message; HTTP requests only when their body can be replayed.
//   - circuit breaking (gRFC A32): at most max_requests requests in flight
//     per cluster; more fail at once with UNAVAILABLE or ErrCircuitOpen.
//   - LB policy: round_robin, least_request (two random choices, gRFC A48)
//     and ring_hash (gRFC A42) with the route's hash policies (header,
//     channel ID, and for HTTP query parameter).
//
// Within a cluster, endpoints are those of the most preferred priority
// that has usable ones; locality and endpoint weights and outlier
// detection are not applied yet.
package balancer
