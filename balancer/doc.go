// Package balancer routes requests the way a sidecar would: route match ->
// weighted cluster -> endpoint, from xDS resources, with the routes'
// timeouts and retries and the clusters' circuit breakers.
//
// Quick start, for a gRPC channel:
//
//	builder := balancer.NewResolverBuilder(xdsClient, balancer.WithLogger(logger))
//	opts := append(builder.DialOptions(), // resolver + timeout/retry interceptors
//		grpc.WithTransportCredentials(creds)) // does each SubConn's cluster mTLS
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
// RoundTripper share one aggregation of xDS watches (aggregator.go): the
// listener named after the target, its route config, and every cluster and
// endpoints resource the chosen virtual host's routes name, turned into one
// immutable snapshot. One routing core serves both front-ends: table.go
// turns a snapshot and the state of its connections into a routing table,
// publisher.go decides when a table is published (pending, timeout, drain);
// the LB policy "mesh_router" (lb.go, the one global registration of this
// package) keeps a SubConn per cluster endpoint, tagged so the transport
// credentials do each cluster's mTLS, and the RoundTripper
// (roundtripper.go) keeps an http.Transport per cluster endpoint, dialled
// with the caller's DialTLSFunc. A table is published with one atomic
// store; each request does one atomic load, a route match, a weighted
// cluster pick and an endpoint pick, without locks or allocations. A gRPC
// call is routed once, by the channel's interceptor, against the table the
// picker serves (decision.go); the picker only picks an endpoint of the
// decided cluster.
//
// Config changes never fail a request: a table that sends traffic to a
// cluster with no ready connection (gRPC) or no usable endpoint (HTTP)
// waits (up to 10 s) while the old table serves, and connections no longer
// used drain for 5 s before they close.
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
//   - fault injection (gRFC A33): the listener's fault filters, or a
//     route's (or virtual host's) typed_per_filter_config override, delay
//     (fixed or from x-envoy-fault-delay-request) and abort (gRPC status,
//     HTTP status, or from x-envoy-fault-abort-(grpc-)request) a share of
//     requests, within max_active_faults. Delays end early with the
//     request's context. Aborted gRPC RPCs fail with the status; aborted
//     HTTP requests get a local response with the status (and grpc-status).
//   - outlier detection (gRFC A50): success-rate and failure-percentage
//     ejection, and Envoy's consecutive_5xx (Istio's consecutive5xxErrors)
//     checked every interval; per-endpoint counters are atomics updated as
//     requests finish, and ejected endpoints leave the published table until
//     base_ejection_time x their multiplier (capped by max_ejection_time)
//     has passed.
//   - localities and priorities (gRFC A27, A52): traffic goes to the most
//     preferred priority that has a ready endpoint (not ejected); a priority
//     still connecting holds RPCs, one whose endpoints all failed fails over
//     to the next. Every priority is connected, so failover needs no dial.
//     The HTTP RoundTripper dials per request and keeps no connection
//     state to fail over on: as in Envoy (and as Istio's locality failover
//     requires), its endpoints leave a priority by outlier ejection or by
//     the health the control plane reports, not by a failed dial.
//     Within the priority, round_robin is weighted by locality weight times
//     the endpoint's share of its locality's endpoint weights (smooth
//     weighted round robin, unrolled into a schedule, so a pick stays one
//     atomic add and no allocation).
//   - cluster_header (Envoy's RouteAction.cluster_header; gRPC ignores
//     it, gRFC A28): the request header's first value names the cluster.
//     The resolver cannot watch a cluster it first hears of in a request,
//     so only clusters that other routes of the same virtual host name
//     are routable (a weight-0 leg is enough to make one reachable);
//     any other value, or a missing header, fails the request with
//     UNAVAILABLE (gRPC) or a 503 UnavailableError (HTTP) wrapping
//     ErrUnroutableCluster, naming the header and the cluster.
//
// ResolverBuilder.ClusterStates and RoundTripper.ClusterStates list every
// live channel's clusters and endpoints (connection state, in-flight
// requests, outlier ejections), read from the published tables, for admin
// pages.
//
// Timers (fault delays, outlier detection intervals) run on a clock that
// the package's tests replace, so that they step time instead of waiting
// for it.
package balancer
