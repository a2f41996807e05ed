package xdstest

import (
	"net"
	"strconv"

	clusterpb "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corepb "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointpb "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerpb "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routepb "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	routerpb "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmpb "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlspb "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"mesh/xdsclient"
)

// CertProvider is the certificate provider instance name the TLS builders
// use, as istiod does; the bootstrap must define it.
const CertProvider = "default"

// MustAny wraps m in an Any, panicking on failure (test helper; marshal of
// a well-formed proto does not fail).
func MustAny(m proto.Message) *anypb.Any {
	a, err := anypb.New(m)
	if err != nil {
		panic(err)
	}
	return a
}

func adsSource() *corepb.ConfigSource {
	return &corepb.ConfigSource{
		ResourceApiVersion:    corepb.ApiVersion_V3,
		ConfigSourceSpecifier: &corepb.ConfigSource_Ads{Ads: &corepb.AggregatedConfigSource{}},
	}
}

// RouterFilter is the terminal HTTP filter every HttpConnectionManager needs.
func RouterFilter() *hcmpb.HttpFilter {
	return &hcmpb.HttpFilter{
		Name:       "envoy.filters.http.router",
		ConfigType: &hcmpb.HttpFilter_TypedConfig{TypedConfig: MustAny(&routerpb.Router{})},
	}
}

// HCM returns an HttpConnectionManager reading routes from RDS rdsName.
func HCM(rdsName string) *hcmpb.HttpConnectionManager {
	return &hcmpb.HttpConnectionManager{
		StatPrefix: "mesh",
		RouteSpecifier: &hcmpb.HttpConnectionManager_Rds{Rds: &hcmpb.Rds{
			ConfigSource:    adsSource(),
			RouteConfigName: rdsName,
		}},
		HttpFilters: []*hcmpb.HttpFilter{RouterFilter()},
	}
}

// ClientListener returns an API listener (gRFC A27) whose routes come from
// RDS rdsName, as istiod emits for "host:port".
func ClientListener(name, rdsName string) *listenerpb.Listener {
	return &listenerpb.Listener{
		Name:        name,
		ApiListener: &listenerpb.ApiListener{ApiListener: MustAny(HCM(rdsName))},
	}
}

// ServerListener returns an inbound listener (gRFC A36) on ip:port with one
// filter chain whose inline route config accepts everything. With mtls it
// requires client certificates from CertProvider.
func ServerListener(name, ip string, port uint32, mtls bool) *listenerpb.Listener {
	hcm := &hcmpb.HttpConnectionManager{
		StatPrefix: "inbound",
		RouteSpecifier: &hcmpb.HttpConnectionManager_RouteConfig{RouteConfig: &routepb.RouteConfiguration{
			Name: "inbound|" + strconv.FormatUint(uint64(port), 10),
			VirtualHosts: []*routepb.VirtualHost{{
				Name:    "inbound",
				Domains: []string{"*"},
				Routes: []*routepb.Route{{
					Match:  &routepb.RouteMatch{PathSpecifier: &routepb.RouteMatch_Prefix{Prefix: "/"}},
					Action: &routepb.Route_NonForwardingAction{NonForwardingAction: &routepb.NonForwardingAction{}},
				}},
			}},
		}},
		HttpFilters: []*hcmpb.HttpFilter{RouterFilter()},
	}
	chain := &listenerpb.FilterChain{
		Name: "inbound-chain",
		Filters: []*listenerpb.Filter{{
			Name:       "envoy.filters.network.http_connection_manager",
			ConfigType: &listenerpb.Filter_TypedConfig{TypedConfig: MustAny(hcm)},
		}},
	}
	if mtls {
		chain.TransportSocket = &corepb.TransportSocket{
			Name: "envoy.transport_sockets.tls",
			ConfigType: &corepb.TransportSocket_TypedConfig{TypedConfig: MustAny(&tlspb.DownstreamTlsContext{
				CommonTlsContext:         commonTLS(),
				RequireClientCertificate: wrapperspb.Bool(true),
			})},
		}
	}
	return &listenerpb.Listener{
		Name: name,
		Address: &corepb.Address{Address: &corepb.Address_SocketAddress{SocketAddress: &corepb.SocketAddress{
			Address:       ip,
			PortSpecifier: &corepb.SocketAddress_PortValue{PortValue: port},
		}}},
		FilterChains: []*listenerpb.FilterChain{chain},
	}
}

// commonTLS names CertProvider for both the identity and the roots, in
// istiod's combined_validation_context shape.
func commonTLS() *tlspb.CommonTlsContext {
	return &tlspb.CommonTlsContext{
		TlsCertificateProviderInstance: &tlspb.CertificateProviderPluginInstance{InstanceName: CertProvider, CertificateName: "default"},
		ValidationContextType: &tlspb.CommonTlsContext_CombinedValidationContext{
			CombinedValidationContext: &tlspb.CommonTlsContext_CombinedCertificateValidationContext{
				DefaultValidationContext: &tlspb.CertificateValidationContext{
					CaCertificateProviderInstance: &tlspb.CertificateProviderPluginInstance{InstanceName: CertProvider, CertificateName: "ROOTCA"},
				},
			},
		},
	}
}

// RouteConfig returns a route config with one virtual host for domain and a
// catch-all route to clusters: a single cluster action for one cluster, a
// weighted split for several.
func RouteConfig(name, domain string, clusters ...xdsclient.ClusterWeight) *routepb.RouteConfiguration {
	action := &routepb.RouteAction{}
	if len(clusters) == 1 {
		action.ClusterSpecifier = &routepb.RouteAction_Cluster{Cluster: clusters[0].Name}
	} else {
		wc := &routepb.WeightedCluster{}
		for _, c := range clusters {
			wc.Clusters = append(wc.Clusters, &routepb.WeightedCluster_ClusterWeight{Name: c.Name, Weight: wrapperspb.UInt32(c.Weight)})
		}
		action.ClusterSpecifier = &routepb.RouteAction_WeightedClusters{WeightedClusters: wc}
	}
	return &routepb.RouteConfiguration{
		Name: name,
		VirtualHosts: []*routepb.VirtualHost{{
			Name:    domain,
			Domains: []string{domain},
			Routes: []*routepb.Route{{
				Name:   "default",
				Match:  &routepb.RouteMatch{PathSpecifier: &routepb.RouteMatch_Prefix{Prefix: ""}},
				Action: &routepb.Route_Route{Route: action},
			}},
		}},
	}
}

// EDSCluster returns a round-robin EDS cluster whose endpoints are the EDS
// resource of the same name. With tls it uses CertProvider for mTLS.
func EDSCluster(name string, tls bool) *clusterpb.Cluster {
	c := &clusterpb.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &clusterpb.Cluster_Type{Type: clusterpb.Cluster_EDS},
		EdsClusterConfig:     &clusterpb.Cluster_EdsClusterConfig{EdsConfig: adsSource(), ServiceName: name},
		LbPolicy:             clusterpb.Cluster_ROUND_ROBIN,
	}
	if tls {
		c.TransportSocket = &corepb.TransportSocket{
			Name:       "envoy.transport_sockets.tls",
			ConfigType: &corepb.TransportSocket_TypedConfig{TypedConfig: MustAny(&tlspb.UpstreamTlsContext{CommonTlsContext: commonTLS()})},
		}
	}
	return c
}

// Endpoints returns a ClusterLoadAssignment with one locality (weight 1)
// holding addrs, each "ip:port". A malformed address is kept as is so
// tests can exercise validation.
func Endpoints(name string, addrs ...string) *endpointpb.ClusterLoadAssignment {
	loc := &endpointpb.LocalityLbEndpoints{
		Locality:            &corepb.Locality{Region: "test"},
		LoadBalancingWeight: wrapperspb.UInt32(1),
	}
	for _, a := range addrs {
		host, portStr, err := net.SplitHostPort(a)
		if err != nil {
			host, portStr = a, "0"
		}
		port, _ := strconv.ParseUint(portStr, 10, 32)
		loc.LbEndpoints = append(loc.LbEndpoints, &endpointpb.LbEndpoint{
			HostIdentifier: &endpointpb.LbEndpoint_Endpoint{Endpoint: &endpointpb.Endpoint{
				Address: &corepb.Address{Address: &corepb.Address_SocketAddress{SocketAddress: &corepb.SocketAddress{
					Address:       host,
					PortSpecifier: &corepb.SocketAddress_PortValue{PortValue: uint32(port)},
				}}},
			}},
			HealthStatus: corepb.HealthStatus_HEALTHY,
		})
	}
	return &endpointpb.ClusterLoadAssignment{ClusterName: name, Endpoints: []*endpointpb.LocalityLbEndpoints{loc}}
}
