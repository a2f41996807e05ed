package xdsclient

import (
	"strings"
	"testing"
	"time"

	clusterpb "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corepb "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointpb "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerpb "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routepb "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	faultpb "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	routerpb "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmpb "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlspb "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcherpb "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	typepb "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

func mustAny(t testing.TB, m proto.Message) *anypb.Any {
	t.Helper()
	a, err := anypb.New(m)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func testDecodeContext() *decodeContext {
	return &decodeContext{providers: map[string]CertificateProvider{"default": {PluginName: PluginFileWatcher}}}
}

func ads() *corepb.ConfigSource {
	return &corepb.ConfigSource{ConfigSourceSpecifier: &corepb.ConfigSource_Ads{Ads: &corepb.AggregatedConfigSource{}}}
}

func router(t testing.TB) *hcmpb.HttpFilter {
	return &hcmpb.HttpFilter{Name: "router", ConfigType: &hcmpb.HttpFilter_TypedConfig{TypedConfig: mustAny(t, &routerpb.Router{})}}
}

func rdsHCM(t testing.TB) *hcmpb.HttpConnectionManager {
	return &hcmpb.HttpConnectionManager{
		RouteSpecifier: &hcmpb.HttpConnectionManager_Rds{Rds: &hcmpb.Rds{ConfigSource: ads(), RouteConfigName: "r1"}},
		HttpFilters:    []*hcmpb.HttpFilter{router(t)},
	}
}

func apiListener(t testing.TB, hcm proto.Message) *listenerpb.Listener {
	return &listenerpb.Listener{Name: "svc:80", ApiListener: &listenerpb.ApiListener{ApiListener: mustAny(t, hcm)}}
}

func sockAddr(ip string, port uint32) *corepb.Address {
	return &corepb.Address{Address: &corepb.Address_SocketAddress{SocketAddress: &corepb.SocketAddress{
		Address: ip, PortSpecifier: &corepb.SocketAddress_PortValue{PortValue: port}}}}
}

func providerInstance(name, cert string) *tlspb.CertificateProviderPluginInstance {
	return &tlspb.CertificateProviderPluginInstance{InstanceName: name, CertificateName: cert}
}

// istioInboundListener is shaped like istiod's grpcgen inbound listener:
// mTLS with combined_validation_context, inline non-forwarding routes.
func istioInboundListener(t testing.TB) *listenerpb.Listener {
	hcm := &hcmpb.HttpConnectionManager{
		RouteSpecifier: &hcmpb.HttpConnectionManager_RouteConfig{RouteConfig: &routepb.RouteConfiguration{
			Name: "inbound|8080||",
			VirtualHosts: []*routepb.VirtualHost{{Name: "inbound|http|8080", Domains: []string{"*"}, Routes: []*routepb.Route{{
				Match:  &routepb.RouteMatch{PathSpecifier: &routepb.RouteMatch_Prefix{Prefix: "/"}},
				Action: &routepb.Route_NonForwardingAction{NonForwardingAction: &routepb.NonForwardingAction{}},
			}}}},
		}},
		HttpFilters: []*hcmpb.HttpFilter{router(t)},
	}
	tls := &tlspb.DownstreamTlsContext{
		CommonTlsContext: &tlspb.CommonTlsContext{
			TlsCertificateProviderInstance: providerInstance("default", "default"),
			ValidationContextType: &tlspb.CommonTlsContext_CombinedValidationContext{CombinedValidationContext: &tlspb.CommonTlsContext_CombinedCertificateValidationContext{
				DefaultValidationContext: &tlspb.CertificateValidationContext{CaCertificateProviderInstance: providerInstance("default", "ROOTCA")},
			}},
		},
		RequireClientCertificate: wrapperspb.Bool(true),
	}
	return &listenerpb.Listener{
		Name:    "xds.istio.io/grpc/lds/inbound/0.0.0.0:8080",
		Address: sockAddr("0.0.0.0", 8080),
		FilterChains: []*listenerpb.FilterChain{{
			Name: "inbound-mtls",
			FilterChainMatch: &listenerpb.FilterChainMatch{
				DestinationPort:      wrapperspb.UInt32(8080),
				PrefixRanges:         []*corepb.CidrRange{{AddressPrefix: "10.0.0.0", PrefixLen: wrapperspb.UInt32(8)}},
				SourceType:           listenerpb.FilterChainMatch_EXTERNAL,
				SourcePorts:          []uint32{1234},
				TransportProtocol:    "tls",
				ApplicationProtocols: []string{"istio-peer-exchange", "h2"},
			},
			Filters: []*listenerpb.Filter{{Name: "hcm", ConfigType: &listenerpb.Filter_TypedConfig{TypedConfig: mustAny(t, hcm)}}},
			TransportSocket: &corepb.TransportSocket{Name: transportSocketTLS,
				ConfigType: &corepb.TransportSocket_TypedConfig{TypedConfig: mustAny(t, tls)}},
		}},
	}
}

func route(action *routepb.RouteAction) *routepb.Route {
	return &routepb.Route{
		Match:  &routepb.RouteMatch{PathSpecifier: &routepb.RouteMatch_Prefix{Prefix: "/"}},
		Action: &routepb.Route_Route{Route: action},
	}
}

func routeConfig(routes ...*routepb.Route) *routepb.RouteConfiguration {
	return &routepb.RouteConfiguration{Name: "foo", VirtualHosts: []*routepb.VirtualHost{{Name: "vh", Domains: []string{"svc"}, Routes: routes}}}
}

func clusterRoute(name string) *routepb.Route {
	return route(&routepb.RouteAction{ClusterSpecifier: &routepb.RouteAction_Cluster{Cluster: name}})
}

func edsCluster() *clusterpb.Cluster {
	return &clusterpb.Cluster{
		Name:                 "c1",
		ClusterDiscoveryType: &clusterpb.Cluster_Type{Type: clusterpb.Cluster_EDS},
		EdsClusterConfig:     &clusterpb.Cluster_EdsClusterConfig{EdsConfig: ads(), ServiceName: "c1-eds"},
	}
}

func cla(eps ...*endpointpb.LocalityLbEndpoints) *endpointpb.ClusterLoadAssignment {
	return &endpointpb.ClusterLoadAssignment{ClusterName: "e1", Endpoints: eps}
}

func locality(weight *wrapperspb.UInt32Value, addrs ...*corepb.Address) *endpointpb.LocalityLbEndpoints {
	le := &endpointpb.LocalityLbEndpoints{LoadBalancingWeight: weight}
	for _, a := range addrs {
		le.LbEndpoints = append(le.LbEndpoints, &endpointpb.LbEndpoint{HostIdentifier: &endpointpb.LbEndpoint_Endpoint{Endpoint: &endpointpb.Endpoint{Address: a}}})
	}
	return le
}

func decodeAny(dc *decodeContext, a *anypb.Any) (string, any, error) {
	k := kinds()
	for _, info := range k {
		if info.typeURL == a.GetTypeUrl() {
			return info.decode(dc, a)
		}
	}
	return "", nil, nil
}

func TestDecodeErrorsNameTheField(t *testing.T) {
	tests := []struct {
		name string
		res  func(t testing.TB) proto.Message
		want string
	}{
		{"listener without name", func(t testing.TB) proto.Message { l := apiListener(t, rdsHCM(t)); l.Name = ""; return l },
			"listener: name: missing"},
		{"listener without api_listener or address", func(t testing.TB) proto.Message { return &listenerpb.Listener{Name: "l"} },
			`listener "l": address: missing`},
		{"api_listener not an HCM", func(t testing.TB) proto.Message { return apiListener(t, &routerpb.Router{}) },
			`listener "svc:80": api_listener.api_listener: want an HttpConnectionManager`},
		{"rds not ads", func(t testing.TB) proto.Message {
			h := rdsHCM(t)
			h.GetRds().ConfigSource = &corepb.ConfigSource{ConfigSourceSpecifier: &corepb.ConfigSource_Path{Path: "/x"}}
			return apiListener(t, h)
		}, `listener "svc:80": api_listener.api_listener.rds.config_source: must be ads or self`},
		{"router not last", func(t testing.TB) proto.Message {
			h := rdsHCM(t)
			h.HttpFilters = append(h.HttpFilters, &hcmpb.HttpFilter{Name: "fault", ConfigType: &hcmpb.HttpFilter_TypedConfig{TypedConfig: mustAny(t, &faultpb.HTTPFault{})}})
			return apiListener(t, h)
		}, `listener "svc:80": api_listener.api_listener.http_filters[0]: the router filter must be last`},
		{"unknown required filter", func(t testing.TB) proto.Message {
			h := rdsHCM(t)
			h.HttpFilters = append([]*hcmpb.HttpFilter{{Name: "weird", ConfigType: &hcmpb.HttpFilter_TypedConfig{TypedConfig: mustAny(t, &clusterpb.Cluster{})}}}, h.HttpFilters...)
			return apiListener(t, h)
		}, `listener "svc:80": api_listener.api_listener.http_filters[0].typed_config: unsupported filter type "type.googleapis.com/envoy.config.cluster.v3.Cluster" for filter "weird"`},
		{"server listener no chains", func(t testing.TB) proto.Message {
			l := istioInboundListener(t)
			l.FilterChains = nil
			return l
		}, `listener "xds.istio.io/grpc/lds/inbound/0.0.0.0:8080": filter_chains: a server listener needs at least one filter chain`},
		{"filter chain without HCM", func(t testing.TB) proto.Message {
			l := istioInboundListener(t)
			l.FilterChains[0].Filters[0].ConfigType = &listenerpb.Filter_TypedConfig{TypedConfig: mustAny(t, &routerpb.Router{})}
			return l
		}, `filter_chains[0].filters: filter "hcm" is not an HttpConnectionManager`},
		{"tls without identity", func(t testing.TB) proto.Message {
			l := istioInboundListener(t)
			l.FilterChains[0].TransportSocket.ConfigType = &corepb.TransportSocket_TypedConfig{TypedConfig: mustAny(t, &tlspb.DownstreamTlsContext{CommonTlsContext: &tlspb.CommonTlsContext{}})}
			return l
		}, `filter_chains[0].transport_socket.typed_config.common_tls_context.tls_certificate_provider_instance: missing`},
		{"tls unknown provider", func(t testing.TB) proto.Message {
			l := istioInboundListener(t)
			l.FilterChains[0].TransportSocket.ConfigType = &corepb.TransportSocket_TypedConfig{TypedConfig: mustAny(t, &tlspb.DownstreamTlsContext{CommonTlsContext: &tlspb.CommonTlsContext{
				TlsCertificateProviderInstance: providerInstance("nope", "x")}})}
			return l
		}, `filter_chains[0].transport_socket.typed_config.common_tls_context.tls_certificate_provider_instance.instance_name: certificate provider "nope" is not in the bootstrap`},
		{"bad prefix range", func(t testing.TB) proto.Message {
			l := istioInboundListener(t)
			l.FilterChains[0].FilterChainMatch.PrefixRanges[0].AddressPrefix = "not-ip"
			return l
		}, `filter_chains[0].filter_chain_match.prefix_ranges[0].address_prefix: "not-ip" is not an IP address`},
		{"weighted clusters total 0", func(t testing.TB) proto.Message {
			return routeConfig(clusterRoute("a"), clusterRoute("b"), route(&routepb.RouteAction{ClusterSpecifier: &routepb.RouteAction_WeightedClusters{WeightedClusters: &routepb.WeightedCluster{
				Clusters: []*routepb.WeightedCluster_ClusterWeight{{Name: "a", Weight: wrapperspb.UInt32(0)}, {Name: "b"}}}}}))
		}, `route_config "foo": virtual_hosts[0].routes[2].route.weighted_clusters: total weight is 0`},
		{"virtual host without domains", func(t testing.TB) proto.Message {
			rc := routeConfig(clusterRoute("a"))
			rc.VirtualHosts[0].Domains = nil
			return rc
		}, `route_config "foo": virtual_hosts[0].domains: missing`},
		{"bad regex", func(t testing.TB) proto.Message {
			r := clusterRoute("a")
			r.Match.PathSpecifier = &routepb.RouteMatch_SafeRegex{SafeRegex: &matcherpb.RegexMatcher{Regex: "(("}}
			return routeConfig(r)
		}, `route_config "foo": virtual_hosts[0].routes[0].match.safe_regex.regex:`},
		{"bad header range", func(t testing.TB) proto.Message {
			r := clusterRoute("a")
			r.Match.Headers = []*routepb.HeaderMatcher{{Name: "x", HeaderMatchSpecifier: &routepb.HeaderMatcher_RangeMatch{RangeMatch: &typepb.Int64Range{Start: 5, End: 1}}}}
			return routeConfig(r)
		}, `route_config "foo": virtual_hosts[0].routes[0].match.headers[0].range_match: start 5 must be below end 1`},
		{"route without cluster", func(t testing.TB) proto.Message {
			return routeConfig(route(&routepb.RouteAction{}))
		}, `route_config "foo": virtual_hosts[0].routes[0].route: cluster_specifier: missing`},
		{"negative max stream duration", func(t testing.TB) proto.Message {
			return routeConfig(route(&routepb.RouteAction{ClusterSpecifier: &routepb.RouteAction_Cluster{Cluster: "a"},
				MaxStreamDuration: &routepb.RouteAction_MaxStreamDuration{MaxStreamDuration: durationpb.New(-time.Second)}}))
		}, `route_config "foo": virtual_hosts[0].routes[0].route.max_stream_duration.max_stream_duration: must not be negative`},
		{"eds cluster not ads", func(t testing.TB) proto.Message {
			c := edsCluster()
			c.EdsClusterConfig.EdsConfig = nil
			return c
		}, `cluster "c1": eds_cluster_config.eds_config: must be ads or self`},
		{"static cluster", func(t testing.TB) proto.Message {
			c := edsCluster()
			c.ClusterDiscoveryType = &clusterpb.Cluster_Type{Type: clusterpb.Cluster_STATIC}
			return c
		}, `cluster "c1": type: unsupported discovery type STATIC`},
		{"maglev", func(t testing.TB) proto.Message { c := edsCluster(); c.LbPolicy = clusterpb.Cluster_MAGLEV; return c },
			`cluster "c1": lb_policy: unsupported MAGLEV`},
		{"logical dns two endpoints", func(t testing.TB) proto.Message {
			c := edsCluster()
			c.ClusterDiscoveryType = &clusterpb.Cluster_Type{Type: clusterpb.Cluster_LOGICAL_DNS}
			c.LoadAssignment = cla(locality(wrapperspb.UInt32(1), sockAddr("1.2.3.4", 80), sockAddr("1.2.3.5", 80)))
			return c
		}, `cluster "c1": load_assignment.endpoints: a LOGICAL_DNS cluster needs exactly one locality with exactly one endpoint`},
		{"upstream tls without roots", func(t testing.TB) proto.Message {
			c := edsCluster()
			c.TransportSocket = &corepb.TransportSocket{Name: transportSocketTLS, ConfigType: &corepb.TransportSocket_TypedConfig{TypedConfig: mustAny(t, &tlspb.UpstreamTlsContext{
				CommonTlsContext: &tlspb.CommonTlsContext{TlsCertificateProviderInstance: providerInstance("default", "default")}})}}
			return c
		}, `cluster "c1": transport_socket.typed_config.common_tls_context: no root certificate provider`},
		{"upstream tls empty san prefix", func(t testing.TB) proto.Message {
			c := edsCluster()
			c.TransportSocket = &corepb.TransportSocket{Name: transportSocketTLS, ConfigType: &corepb.TransportSocket_TypedConfig{TypedConfig: mustAny(t, &tlspb.UpstreamTlsContext{
				CommonTlsContext: &tlspb.CommonTlsContext{ValidationContextType: &tlspb.CommonTlsContext_ValidationContext{ValidationContext: &tlspb.CertificateValidationContext{
					CaCertificateProviderInstance: providerInstance("default", "ROOTCA"),
					MatchSubjectAltNames:          []*matcherpb.StringMatcher{{MatchPattern: &matcherpb.StringMatcher_Prefix{Prefix: ""}}},
				}}}})}}
			return c
		}, `cluster "c1": transport_socket.typed_config.common_tls_context.validation_context.match_subject_alt_names[0].prefix: must not be empty`},
		{"locality weight 0", func(t testing.TB) proto.Message { return cla(locality(nil, sockAddr("10.0.0.1", 80))) },
			`cluster_load_assignment "e1": endpoints[0].load_balancing_weight: must be set and positive`},
		{"endpoint port 0", func(t testing.TB) proto.Message { return cla(locality(wrapperspb.UInt32(1), sockAddr("10.0.0.1", 0))) },
			`cluster_load_assignment "e1": endpoints[0].lb_endpoints[0].endpoint.address.socket_address.port_value: must not be 0`},
		{"endpoint not an IP", func(t testing.TB) proto.Message {
			return cla(locality(wrapperspb.UInt32(1), sockAddr("host.example", 80)))
		},
			`cluster_load_assignment "e1": endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address: "host.example" is not an IP address`},
		{"duplicate endpoint", func(t testing.TB) proto.Message {
			second := locality(wrapperspb.UInt32(1), sockAddr("10.0.0.1", 80))
			second.Locality = &corepb.Locality{Zone: "other"}
			return cla(locality(wrapperspb.UInt32(1), sockAddr("10.0.0.1", 80)), second)
		}, `cluster_load_assignment "e1": endpoints[1].lb_endpoints[0].endpoint.address: duplicate address 10.0.0.1:80 (also at endpoints[0].lb_endpoints[0])`},
		{"duplicate locality", func(t testing.TB) proto.Message {
			return cla(locality(wrapperspb.UInt32(1), sockAddr("10.0.0.1", 80)), locality(wrapperspb.UInt32(1), sockAddr("10.0.0.2", 80)))
		}, `cluster_load_assignment "e1": endpoints[1].locality: duplicate locality`},
		{"priority gap", func(t testing.TB) proto.Message {
			le := locality(wrapperspb.UInt32(1), sockAddr("10.0.0.1", 80))
			le.Priority = 1
			return cla(le)
		}, `cluster_load_assignment "e1": endpoints: priorities must be contiguous from 0, priority 0 is missing`},
	}
	if len(tests) < 15 {
		t.Fatalf("only %d cases", len(tests))
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, v, err := decodeAny(testDecodeContext(), mustAny(t, tc.res(t)))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error = %v (value %+v), want it to contain %q", err, v, tc.want)
			}
		})
	}
}

func TestDecodeIstioInboundListener(t *testing.T) {
	name, v, err := testDecodeContext().decodeListener(mustAny(t, istioInboundListener(t)))
	if err != nil {
		t.Fatal(err)
	}
	l := v
	if name != l.Name || !l.IsServer() || l.Address != "0.0.0.0:8080" || len(l.FilterChains) != 1 {
		t.Fatalf("listener = %+v", l)
	}
	fc := l.FilterChains[0]
	if fc.Match.DestinationPort != 8080 || fc.Match.PrefixRanges[0].String() != "10.0.0.0/8" || fc.Match.SourceType != SourceExternal ||
		fc.Match.SourcePorts[0] != 1234 || fc.Match.TransportProtocol != "tls" || len(fc.Match.ApplicationProtocols) != 2 {
		t.Errorf("match = %+v", fc.Match)
	}
	want := DownstreamTLS{Identity: CertificateRef{Provider: "default", Certificate: "default"}, Roots: &CertificateRef{Provider: "default", Certificate: "ROOTCA"}, RequireClientCertificate: true}
	if fc.TLS == nil || fc.TLS.Identity != want.Identity || *fc.TLS.Roots != *want.Roots || !fc.TLS.RequireClientCertificate {
		t.Errorf("tls = %+v", fc.TLS)
	}
	if r := fc.HTTP.RouteConfig.VirtualHosts[0].Routes[0]; !r.NonForwarding || r.Match.Prefix != "/" {
		t.Errorf("route = %+v", r)
	}
}

func TestDecodeRouteMatchers(t *testing.T) {
	r := route(&routepb.RouteAction{ClusterSpecifier: &routepb.RouteAction_Cluster{Cluster: "a"},
		MaxStreamDuration: &routepb.RouteAction_MaxStreamDuration{MaxStreamDuration: durationpb.New(5 * time.Second), GrpcTimeoutHeaderMax: durationpb.New(2 * time.Second)}})
	r.Match.PathSpecifier = &routepb.RouteMatch_SafeRegex{SafeRegex: &matcherpb.RegexMatcher{Regex: "/pkg.Svc/Get.*"}}
	r.Match.CaseSensitive = wrapperspb.Bool(false)
	r.Match.RuntimeFraction = &corepb.RuntimeFractionalPercent{DefaultValue: &typepb.FractionalPercent{Numerator: 25, Denominator: typepb.FractionalPercent_HUNDRED}}
	r.Match.Headers = []*routepb.HeaderMatcher{
		{Name: "x-exact", HeaderMatchSpecifier: &routepb.HeaderMatcher_ExactMatch{ExactMatch: "v"}},
		{Name: "x-str", HeaderMatchSpecifier: &routepb.HeaderMatcher_StringMatch{StringMatch: &matcherpb.StringMatcher{MatchPattern: &matcherpb.StringMatcher_Suffix{Suffix: "-canary"}, IgnoreCase: true}}},
		{Name: "x-present", HeaderMatchSpecifier: &routepb.HeaderMatcher_PresentMatch{PresentMatch: true}, InvertMatch: true},
		{Name: "x-range", HeaderMatchSpecifier: &routepb.HeaderMatcher_RangeMatch{RangeMatch: &typepb.Int64Range{Start: 1, End: 10}}},
	}
	redirect := &routepb.Route{Match: &routepb.RouteMatch{PathSpecifier: &routepb.RouteMatch_Prefix{Prefix: "/old"}},
		Action: &routepb.Route_Redirect{Redirect: &routepb.RedirectAction{}}}
	_, rc, err := testDecodeContext().decodeRouteConfig(mustAny(t, routeConfig(redirect, r)))
	if err != nil {
		t.Fatal(err)
	}
	routes := rc.VirtualHosts[0].Routes
	if len(routes) != 1 {
		t.Fatalf("routes = %+v, want the redirect skipped", routes)
	}
	m := routes[0].Match
	if !m.Regex.MatchString("/pkg.Svc/GetThing") || m.Regex.MatchString("x/pkg.Svc/GetThing") || m.CaseSensitive {
		t.Errorf("regex match = %+v", m)
	}
	if m.FractionPerMillion == nil || *m.FractionPerMillion != 250000 {
		t.Errorf("fraction = %v", m.FractionPerMillion)
	}
	h := m.Headers
	if !h[0].Match.Match("v") || !h[1].Match.Match("A-CANARY") || h[2].Present == nil || !*h[2].Present || !h[2].Invert || *h[3].Range != (Int64Range{1, 10}) {
		t.Errorf("headers = %+v", h)
	}
	if routes[0].Action.Timeout != 2*time.Second {
		t.Errorf("timeout = %v, want grpc_timeout_header_max 2s", routes[0].Action.Timeout)
	}
}

func TestDecodeClusterWithIstioTLS(t *testing.T) {
	c := edsCluster()
	c.LbPolicy = clusterpb.Cluster_RING_HASH
	c.CircuitBreakers = &clusterpb.CircuitBreakers{Thresholds: []*clusterpb.CircuitBreakers_Thresholds{
		{Priority: corepb.RoutingPriority_HIGH, MaxRequests: wrapperspb.UInt32(7)},
		{Priority: corepb.RoutingPriority_DEFAULT, MaxRequests: wrapperspb.UInt32(100)},
	}}
	c.TransportSocket = &corepb.TransportSocket{Name: transportSocketTLS, ConfigType: &corepb.TransportSocket_TypedConfig{TypedConfig: mustAny(t, &tlspb.UpstreamTlsContext{
		Sni: "outbound_.8080_._.svc",
		CommonTlsContext: &tlspb.CommonTlsContext{
			TlsCertificateProviderInstance: providerInstance("default", "default"),
			ValidationContextType: &tlspb.CommonTlsContext_CombinedValidationContext{CombinedValidationContext: &tlspb.CommonTlsContext_CombinedCertificateValidationContext{
				DefaultValidationContext: &tlspb.CertificateValidationContext{MatchSubjectAltNames: []*matcherpb.StringMatcher{
					{MatchPattern: &matcherpb.StringMatcher_Exact{Exact: "spiffe://cluster.local/ns/default/sa/payments"}}}},
				ValidationContextCertificateProviderInstance: &tlspb.CommonTlsContext_CertificateProviderInstance{InstanceName: "default", CertificateName: "ROOTCA"},
			}},
		}})}}
	_, got, err := testDecodeContext().decodeCluster(mustAny(t, c))
	if err != nil {
		t.Fatal(err)
	}
	if got.LBPolicy != LBRingHash || got.MaxRequests != 100 || got.EndpointsName() != "c1-eds" {
		t.Errorf("cluster = %+v", got)
	}
	tls := got.TLS
	if tls == nil || *tls.Identity != (CertificateRef{Provider: "default", Certificate: "default"}) || tls.Roots != (CertificateRef{Provider: "default", Certificate: "ROOTCA"}) ||
		tls.SNI != "outbound_.8080_._.svc" || len(tls.SubjectAltNames) != 1 || !tls.SubjectAltNames[0].Match("spiffe://cluster.local/ns/default/sa/payments") {
		t.Errorf("tls = %+v", tls)
	}
}

func TestDecodeEndpoints(t *testing.T) {
	le := locality(wrapperspb.UInt32(3), sockAddr("10.0.0.1", 80), sockAddr("::1", 81))
	le.Locality = &corepb.Locality{Region: "r", Zone: "z"}
	le.LbEndpoints[0].HealthStatus = corepb.HealthStatus_DRAINING
	le.LbEndpoints[1].LoadBalancingWeight = wrapperspb.UInt32(5)
	pb := cla(le)
	pb.Policy = &endpointpb.ClusterLoadAssignment_Policy{DropOverloads: []*endpointpb.ClusterLoadAssignment_Policy_DropOverload{
		{Category: "throttle", DropPercentage: &typepb.FractionalPercent{Numerator: 5, Denominator: typepb.FractionalPercent_TEN_THOUSAND}}}}
	_, e, err := testDecodeContext().decodeEndpoints(mustAny(t, pb))
	if err != nil {
		t.Fatal(err)
	}
	l := e.Localities[0]
	if l.Locality != (Locality{Region: "r", Zone: "z"}) || l.Weight != 3 || len(l.Endpoints) != 2 {
		t.Fatalf("locality = %+v", l)
	}
	if l.Endpoints[0] != (Endpoint{Address: "10.0.0.1:80", Health: HealthDraining, Weight: 1}) || l.Endpoints[1] != (Endpoint{Address: "[::1]:81", Weight: 5}) {
		t.Errorf("endpoints = %+v", l.Endpoints)
	}
	if e.DropPerMillion["throttle"] != 500 {
		t.Errorf("drops = %v", e.DropPerMillion)
	}
}

// Oneof wrappers with nil contents are legal protos; they must produce
// errors, never panics.
func TestDecodeNilOneofsDoNotPanic(t *testing.T) {
	msgs := []proto.Message{
		apiListener(t, &hcmpb.HttpConnectionManager{RouteSpecifier: &hcmpb.HttpConnectionManager_Rds{}}),
		apiListener(t, &hcmpb.HttpConnectionManager{RouteSpecifier: &hcmpb.HttpConnectionManager_RouteConfig{}, HttpFilters: []*hcmpb.HttpFilter{{Name: "x"}}}),
		&listenerpb.Listener{Name: "l", Address: &corepb.Address{}, FilterChains: []*listenerpb.FilterChain{{Filters: []*listenerpb.Filter{{}}}}},
		&listenerpb.Listener{Name: "l", Address: sockAddr("0.0.0.0", 1), FilterChains: []*listenerpb.FilterChain{{
			Filters:         []*listenerpb.Filter{{Name: "hcm", ConfigType: &listenerpb.Filter_TypedConfig{TypedConfig: mustAny(t, rdsHCM(t))}}},
			TransportSocket: &corepb.TransportSocket{Name: transportSocketTLS},
		}}},
		routeConfig(&routepb.Route{Match: &routepb.RouteMatch{PathSpecifier: &routepb.RouteMatch_SafeRegex{}}, Action: &routepb.Route_Route{}}),
		routeConfig(&routepb.Route{Match: &routepb.RouteMatch{}, Action: &routepb.Route_Route{Route: &routepb.RouteAction{ClusterSpecifier: &routepb.RouteAction_WeightedClusters{}}}}),
		routeConfig(&routepb.Route{Match: &routepb.RouteMatch{PathSpecifier: &routepb.RouteMatch_Prefix{}, Headers: []*routepb.HeaderMatcher{
			{Name: "a", HeaderMatchSpecifier: &routepb.HeaderMatcher_RangeMatch{}},
		}}, Action: &routepb.Route_Route{Route: &routepb.RouteAction{ClusterSpecifier: &routepb.RouteAction_Cluster{Cluster: "c"}}}}),
		routeConfig(&routepb.Route{Match: &routepb.RouteMatch{PathSpecifier: &routepb.RouteMatch_Prefix{}, Headers: []*routepb.HeaderMatcher{
			{Name: "a", HeaderMatchSpecifier: &routepb.HeaderMatcher_StringMatch{}},
		}}, Action: &routepb.Route_Route{Route: &routepb.RouteAction{ClusterSpecifier: &routepb.RouteAction_Cluster{Cluster: "c"}}}}),
		&clusterpb.Cluster{Name: "c", ClusterDiscoveryType: &clusterpb.Cluster_ClusterType{}},
		&clusterpb.Cluster{Name: "c", ClusterDiscoveryType: &clusterpb.Cluster_Type{Type: clusterpb.Cluster_LOGICAL_DNS}, LoadAssignment: cla(&endpointpb.LocalityLbEndpoints{LbEndpoints: []*endpointpb.LbEndpoint{{}}})},
		func() proto.Message {
			c := edsCluster()
			c.TransportSocket = &corepb.TransportSocket{ConfigType: &corepb.TransportSocket_TypedConfig{TypedConfig: mustAny(t, &tlspb.UpstreamTlsContext{
				CommonTlsContext: &tlspb.CommonTlsContext{ValidationContextType: &tlspb.CommonTlsContext_CombinedValidationContext{}}})}}
			return c
		}(),
		func() proto.Message {
			c := edsCluster()
			c.TransportSocket = &corepb.TransportSocket{ConfigType: &corepb.TransportSocket_TypedConfig{TypedConfig: mustAny(t, &tlspb.UpstreamTlsContext{
				CommonTlsContext: &tlspb.CommonTlsContext{ValidationContextType: &tlspb.CommonTlsContext_ValidationContextCertificateProviderInstance{}}})}}
			return c
		}(),
		cla(&endpointpb.LocalityLbEndpoints{LoadBalancingWeight: wrapperspb.UInt32(1), LbEndpoints: []*endpointpb.LbEndpoint{{HostIdentifier: &endpointpb.LbEndpoint_Endpoint{}}}}),
	}
	for i, m := range msgs {
		_, _, err := decodeAny(testDecodeContext(), mustAny(t, m))
		if err == nil {
			t.Errorf("case %d (%T): no error", i, m)
		}
	}
}

// The HttpConnectionManager fields Istio writes for its pathNormalization
// option reach the decoded listener; an unknown escaped-slashes action is
// NACKed with the field named.
func TestDecodePathNormalizationFields(t *testing.T) {
	withHCM := func(edit func(*hcmpb.HttpConnectionManager)) *anypb.Any {
		l := istioInboundListener(t)
		hcm := &hcmpb.HttpConnectionManager{}
		if err := l.FilterChains[0].Filters[0].GetTypedConfig().UnmarshalTo(hcm); err != nil {
			t.Fatal(err)
		}
		edit(hcm)
		l.FilterChains[0].Filters[0].ConfigType = &listenerpb.Filter_TypedConfig{TypedConfig: mustAny(t, hcm)}
		return mustAny(t, l)
	}
	_, l, err := testDecodeContext().decodeListener(withHCM(func(h *hcmpb.HttpConnectionManager) {
		h.NormalizePath = wrapperspb.Bool(true)
		h.MergeSlashes = true
		h.PathWithEscapedSlashesAction = hcmpb.HttpConnectionManager_UNESCAPE_AND_FORWARD
	}))
	if err != nil {
		t.Fatal(err)
	}
	pn := l.FilterChains[0].HTTP.PathNormalization
	if pn.NormalizePath == nil || !*pn.NormalizePath || !pn.MergeSlashes || pn.EscapedSlashes != EscapedSlashesUnescapeAndForward {
		t.Errorf("path normalization = %+v", pn)
	}
	_, l, err = testDecodeContext().decodeListener(withHCM(func(*hcmpb.HttpConnectionManager) {}))
	if err != nil {
		t.Fatal(err)
	}
	if pn := l.FilterChains[0].HTTP.PathNormalization; pn.NormalizePath != nil || pn.MergeSlashes || pn.EscapedSlashes != EscapedSlashesDefault {
		t.Errorf("unset fields decoded as %+v", pn)
	}
	_, _, err = testDecodeContext().decodeListener(withHCM(func(h *hcmpb.HttpConnectionManager) {
		h.PathWithEscapedSlashesAction = 42
	}))
	if err == nil || !strings.Contains(err.Error(), "path_with_escaped_slashes_action") {
		t.Errorf("unknown action: %v, want an error naming path_with_escaped_slashes_action", err)
	}
}
