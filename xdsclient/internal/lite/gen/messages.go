package main

// messages are the Envoy messages the xDS client decodes, by proto name:
// each gets a type of its own. A message field of any other type is kept
// as a *lite.Raw.
var messages = []string{
	// Clusters and endpoints.
	"envoy.config.cluster.v3.Cluster",
	"envoy.config.cluster.v3.Cluster.EdsClusterConfig",
	"envoy.config.cluster.v3.Cluster.CustomClusterType",
	"envoy.config.cluster.v3.Cluster.LeastRequestLbConfig",
	"envoy.config.cluster.v3.Cluster.RingHashLbConfig",
	"envoy.config.cluster.v3.LoadBalancingPolicy",
	"envoy.config.cluster.v3.LoadBalancingPolicy.Policy",
	"envoy.config.cluster.v3.CircuitBreakers",
	"envoy.config.cluster.v3.CircuitBreakers.Thresholds",
	"envoy.config.cluster.v3.OutlierDetection",
	"envoy.config.endpoint.v3.ClusterLoadAssignment",
	"envoy.config.endpoint.v3.ClusterLoadAssignment.Policy",
	"envoy.config.endpoint.v3.ClusterLoadAssignment.Policy.DropOverload",
	"envoy.config.endpoint.v3.LocalityLbEndpoints",
	"envoy.config.endpoint.v3.LbEndpoint",
	"envoy.config.endpoint.v3.Endpoint",
	"envoy.extensions.clusters.aggregate.v3.ClusterConfig",
	"envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest",
	"envoy.extensions.load_balancing_policies.ring_hash.v3.RingHash",

	// Core.
	"envoy.config.core.v3.Address",
	"envoy.config.core.v3.SocketAddress",
	"envoy.config.core.v3.CidrRange",
	"envoy.config.core.v3.ConfigSource",
	"envoy.config.core.v3.AggregatedConfigSource",
	"envoy.config.core.v3.SelfConfigSource",
	"envoy.config.core.v3.TransportSocket",
	"envoy.config.core.v3.TypedExtensionConfig",
	"envoy.config.core.v3.Locality",
	"envoy.config.core.v3.RuntimeFractionalPercent",
	"envoy.config.core.v3.HttpProtocolOptions",
	"envoy.config.core.v3.DataSource",

	// TLS.
	"envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
	"envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
	"envoy.extensions.transport_sockets.tls.v3.CommonTlsContext",
	"envoy.extensions.transport_sockets.tls.v3.CommonTlsContext.CertificateProviderInstance",
	"envoy.extensions.transport_sockets.tls.v3.CommonTlsContext.CombinedCertificateValidationContext",
	"envoy.extensions.transport_sockets.tls.v3.CertificateValidationContext",
	"envoy.extensions.transport_sockets.tls.v3.CertificateProviderPluginInstance",
	"envoy.extensions.transport_sockets.tls.v3.SdsSecretConfig",
	"envoy.extensions.transport_sockets.tls.v3.SubjectAltNameMatcher",
	"envoy.extensions.transport_sockets.tls.v3.Secret",
	"envoy.extensions.transport_sockets.tls.v3.TlsCertificate",
	"envoy.extensions.transport_sockets.tls.v3.SPIFFECertValidatorConfig",
	"envoy.extensions.transport_sockets.tls.v3.SPIFFECertValidatorConfig.TrustDomain",

	// Matchers.
	"envoy.type.matcher.v3.StringMatcher",
	"envoy.type.matcher.v3.RegexMatcher",
	"envoy.type.matcher.v3.PathMatcher",
	"envoy.type.v3.FractionalPercent",
	"envoy.type.v3.Int64Range",
	"envoy.type.v3.Int32Range",
	"envoy.type.matcher.v3.RegexMatchAndSubstitute",

	// Listeners and HTTP connection managers.
	"envoy.config.listener.v3.Listener",
	"envoy.config.listener.v3.ApiListener",
	"envoy.config.listener.v3.FilterChain",
	"envoy.config.listener.v3.FilterChainMatch",
	"envoy.config.listener.v3.Filter",
	"envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
	"envoy.extensions.filters.network.http_connection_manager.v3.Rds",
	"envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter",
	"xds.type.v3.TypedStruct",
	"udpa.type.v1.TypedStruct",

	// Routes.
	"envoy.config.route.v3.RouteConfiguration",
	"envoy.config.route.v3.VirtualHost",
	"envoy.config.route.v3.Route",
	"envoy.config.route.v3.RouteMatch",
	"envoy.config.route.v3.QueryParameterMatcher",
	"envoy.config.route.v3.HeaderMatcher",
	"envoy.config.route.v3.RouteAction",
	"envoy.config.route.v3.RouteAction.HashPolicy",
	"envoy.config.route.v3.RouteAction.HashPolicy.Header",
	"envoy.config.route.v3.RouteAction.HashPolicy.FilterState",
	"envoy.config.route.v3.RouteAction.HashPolicy.QueryParameter",
	"envoy.config.route.v3.RouteAction.HashPolicy.ConnectionProperties",
	"envoy.config.route.v3.RouteAction.HashPolicy.Cookie",
	"envoy.config.route.v3.RouteAction.MaxStreamDuration",
	"envoy.config.route.v3.WeightedCluster",
	"envoy.config.route.v3.WeightedCluster.ClusterWeight",
	"envoy.config.route.v3.RetryPolicy",
	"envoy.config.route.v3.RetryPolicy.RetryBackOff",
	"envoy.config.route.v3.FilterConfig",
	"envoy.extensions.filters.http.fault.v3.HTTPFault",
	"envoy.extensions.filters.http.fault.v3.FaultAbort",
	"envoy.extensions.filters.common.fault.v3.FaultDelay",

	// The ADS protocol.
	"envoy.service.discovery.v3.DiscoveryRequest",
	"envoy.service.discovery.v3.DiscoveryResponse",
	"envoy.service.discovery.v3.DeltaDiscoveryRequest",
	"envoy.service.discovery.v3.DeltaDiscoveryResponse",
	"envoy.service.discovery.v3.Resource",
	"envoy.config.core.v3.Node",

	// Authorization.
	"envoy.extensions.filters.http.rbac.v3.RBAC",
	"envoy.config.rbac.v3.RBAC",
	"envoy.config.rbac.v3.Policy",
	"envoy.config.rbac.v3.Permission",
	"envoy.config.rbac.v3.Permission.Set",
	"envoy.config.rbac.v3.Principal",
	"envoy.config.rbac.v3.Principal.Set",
	"envoy.config.rbac.v3.Principal.Authenticated",
}

// encoded are the messages the client also writes: its requests.
var encoded = []string{
	"envoy.service.discovery.v3.DiscoveryRequest",
	"envoy.service.discovery.v3.DeltaDiscoveryRequest",
	"envoy.config.core.v3.Node",
	"envoy.config.core.v3.Locality",
	"envoy.config.core.v3.Address",
	"envoy.config.core.v3.SocketAddress",
	// Secrets, re-encoded without their keys for CSDS.
	"envoy.extensions.transport_sockets.tls.v3.Secret",
	"envoy.extensions.transport_sockets.tls.v3.TlsCertificate",
	"envoy.extensions.transport_sockets.tls.v3.CertificateValidationContext",
	"envoy.extensions.transport_sockets.tls.v3.CertificateProviderPluginInstance",
	"envoy.extensions.transport_sockets.tls.v3.SubjectAltNameMatcher",
	"envoy.config.core.v3.DataSource",
	"envoy.config.core.v3.TypedExtensionConfig",
	"envoy.type.matcher.v3.StringMatcher",
	"envoy.type.matcher.v3.RegexMatcher",
}

// jsonRoots are the messages the client also reads from JSON (a
// TypedStruct), with every listed message reachable from them.
var jsonRoots = []string{
	"envoy.extensions.filters.http.rbac.v3.RBAC",
}
