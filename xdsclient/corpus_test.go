package xdsclient_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	clusterpb "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corepb "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointpb "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerpb "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routepb "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcmpb "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	maglevpb "github.com/envoyproxy/go-control-plane/envoy/extensions/load_balancing_policies/maglev/v3"
	tlspb "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	matcherpb "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	typepb "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"mesh/internal/testutil"
	"mesh/xdsclient"
	"mesh/xdsclient/xdstest"
)

// invalidCase is one resource a gRPC proxyless client must NACK, built by
// breaking a valid one of the same name.
type invalidCase struct {
	name  string
	typ   string // ResourceStatus.Type
	good  func() types.Resource
	bad   func() types.Resource
	field string // the NACK must name this field path
}

const (
	corpusListener = "svc.default.svc.cluster.local:8080"
	corpusInbound  = "xds.istio.io/grpc/lds/inbound/127.0.0.1:9443"
	corpusRoute    = "svc-route"
	corpusCluster  = "outbound|8080||svc.default.svc.cluster.local"
)

func goodClientListener() *listenerpb.Listener {
	return xdstest.ClientListener(corpusListener, corpusRoute)
}

func goodServerListener() *listenerpb.Listener {
	return xdstest.ServerListener(corpusInbound, "127.0.0.1", 9443, true)
}

func goodRoute() *routepb.RouteConfiguration {
	return xdstest.RouteConfig(corpusRoute, "svc", xdsclient.ClusterWeight{Name: corpusCluster, Weight: 1})
}

func goodCluster() *clusterpb.Cluster { return xdstest.EDSCluster(corpusCluster, true) }

func goodEndpoints() *endpointpb.ClusterLoadAssignment {
	return xdstest.Endpoints(corpusCluster, "10.0.0.1:8080", "10.0.0.2:8080")
}

// clientHCM rewrites the HttpConnectionManager of a client listener.
func clientHCM(edit func(*hcmpb.HttpConnectionManager)) func() types.Resource {
	return func() types.Resource {
		hcm := xdstest.HCM(corpusRoute)
		edit(hcm)
		l := goodClientListener()
		l.ApiListener.ApiListener = xdstest.MustAny(hcm)
		return l
	}
}

// serverChain rewrites the filter chain of a server listener.
func serverChain(edit func(*listenerpb.FilterChain)) func() types.Resource {
	return func() types.Resource {
		l := goodServerListener()
		edit(l.FilterChains[0])
		return l
	}
}

func firstRoute(edit func(*routepb.Route)) func() types.Resource {
	return func() types.Resource {
		rc := goodRoute()
		edit(rc.VirtualHosts[0].Routes[0])
		return rc
	}
}

func clusterEdit(edit func(*clusterpb.Cluster)) func() types.Resource {
	return func() types.Resource {
		c := goodCluster()
		edit(c)
		return c
	}
}

func upstreamTLSEdit(edit func(*tlspb.UpstreamTlsContext)) func() types.Resource {
	return clusterEdit(func(c *clusterpb.Cluster) {
		tc := &tlspb.UpstreamTlsContext{}
		if err := c.GetTransportSocket().GetTypedConfig().UnmarshalTo(tc); err != nil {
			panic(err) // built by xdstest just above
		}
		edit(tc)
		c.TransportSocket.ConfigType = &corepb.TransportSocket_TypedConfig{TypedConfig: xdstest.MustAny(tc)}
	})
}

func endpointsEdit(edit func(*endpointpb.ClusterLoadAssignment)) func() types.Resource {
	return func() types.Resource {
		e := goodEndpoints()
		edit(e)
		return e
	}
}

func socketAddr(ip string, port uint32) *corepb.Address {
	return &corepb.Address{Address: &corepb.Address_SocketAddress{SocketAddress: &corepb.SocketAddress{
		Address: ip, PortSpecifier: &corepb.SocketAddress_PortValue{PortValue: port},
	}}}
}

func pathConfigSource() *corepb.ConfigSource {
	return &corepb.ConfigSource{ConfigSourceSpecifier: &corepb.ConfigSource_Path{Path: "/etc/routes.yaml"}}
}

// invalidCorpus is the table of resources that must be NACKed.
func invalidCorpus() []invalidCase {
	listener := func() types.Resource { return goodClientListener() }
	inbound := func() types.Resource { return goodServerListener() }
	route := func() types.Resource { return goodRoute() }
	cluster := func() types.Resource { return goodCluster() }
	eds := func() types.Resource { return goodEndpoints() }
	unknownFilter := &hcmpb.HttpFilter{Name: "vendor.authz", ConfigType: &hcmpb.HttpFilter_TypedConfig{TypedConfig: xdstest.MustAny(wrapperspb.String("x"))}}
	return []invalidCase{
		// LDS, client side (gRFC A27, A39).
		{"api listener is not an HCM", "listener", listener, func() types.Resource {
			l := goodClientListener()
			l.ApiListener.ApiListener = xdstest.MustAny(wrapperspb.String("not an hcm"))
			return l
		}, "api_listener.api_listener"},
		{"HCM with neither rds nor route_config", "listener", listener, clientHCM(func(h *hcmpb.HttpConnectionManager) { h.RouteSpecifier = nil }), "route_specifier"},
		{"rds config_source not ADS", "listener", listener, clientHCM(func(h *hcmpb.HttpConnectionManager) { h.GetRds().ConfigSource = pathConfigSource() }), "rds.config_source"},
		{"rds without route_config_name", "listener", listener, clientHCM(func(h *hcmpb.HttpConnectionManager) { h.GetRds().RouteConfigName = "" }), "rds.route_config_name"},
		{"no http filters", "listener", listener, clientHCM(func(h *hcmpb.HttpConnectionManager) { h.HttpFilters = nil }), "http_filters"},
		{"router filter not last", "listener", listener, clientHCM(func(h *hcmpb.HttpConnectionManager) {
			f := proto.Clone(unknownFilter).(*hcmpb.HttpFilter)
			f.IsOptional = true
			h.HttpFilters = append(h.HttpFilters, f)
		}), "http_filters"},
		{"unknown required http filter", "listener", listener, clientHCM(func(h *hcmpb.HttpConnectionManager) {
			h.HttpFilters = append([]*hcmpb.HttpFilter{unknownFilter}, h.HttpFilters...)
		}), "http_filters[0].typed_config"},
		{"duplicate http filter names", "listener", listener, clientHCM(func(h *hcmpb.HttpConnectionManager) {
			f := proto.Clone(unknownFilter).(*hcmpb.HttpFilter)
			f.IsOptional = true
			h.HttpFilters = append([]*hcmpb.HttpFilter{f, f}, h.HttpFilters...)
		}), "http_filters[1].name"},
		{"negative max_stream_duration", "listener", listener, clientHCM(func(h *hcmpb.HttpConnectionManager) {
			h.CommonHttpProtocolOptions = &corepb.HttpProtocolOptions{MaxStreamDuration: &durationpb.Duration{Seconds: 1, Nanos: -5}}
		}), "common_http_protocol_options.max_stream_duration"},
		// LDS, server side (gRFC A36).
		{"server listener without filter chains", "listener", inbound, func() types.Resource {
			l := goodServerListener()
			l.FilterChains = nil
			return l
		}, "filter_chains"},
		{"filter chain without HCM", "listener", inbound, serverChain(func(fc *listenerpb.FilterChain) {
			fc.Filters[0].ConfigType = &listenerpb.Filter_TypedConfig{TypedConfig: xdstest.MustAny(wrapperspb.String("tcp_proxy"))}
		}), "filter_chains[0].filters"},
		{"server address is not an IP", "listener", inbound, func() types.Resource {
			l := goodServerListener()
			l.Address = socketAddr("localhost", 9443)
			return l
		}, "address.socket_address.address"},
		{"TLS names a provider not in the bootstrap", "listener", inbound, serverChain(func(fc *listenerpb.FilterChain) {
			tc := &tlspb.DownstreamTlsContext{
				CommonTlsContext: &tlspb.CommonTlsContext{
					TlsCertificateProviderInstance: &tlspb.CertificateProviderPluginInstance{InstanceName: "vault", CertificateName: "default"},
				},
			}
			fc.TransportSocket = &corepb.TransportSocket{Name: "envoy.transport_sockets.tls", ConfigType: &corepb.TransportSocket_TypedConfig{TypedConfig: xdstest.MustAny(tc)}}
		}), "tls_certificate_provider_instance.instance_name"},
		{"require_client_certificate without roots", "listener", inbound, serverChain(func(fc *listenerpb.FilterChain) {
			tc := &tlspb.DownstreamTlsContext{
				RequireClientCertificate: wrapperspb.Bool(true),
				CommonTlsContext: &tlspb.CommonTlsContext{
					TlsCertificateProviderInstance: &tlspb.CertificateProviderPluginInstance{InstanceName: xdstest.CertProvider, CertificateName: "default"},
				},
			}
			fc.TransportSocket = &corepb.TransportSocket{Name: "envoy.transport_sockets.tls", ConfigType: &corepb.TransportSocket_TypedConfig{TypedConfig: xdstest.MustAny(tc)}}
		}), "common_tls_context"},
		{"invalid source port", "listener", inbound, serverChain(func(fc *listenerpb.FilterChain) {
			fc.FilterChainMatch = &listenerpb.FilterChainMatch{SourcePorts: []uint32{70000}}
		}), "filter_chain_match.source_ports[0]"},
		// RDS (gRFC A28).
		{"virtual host without domains", "route_config", route, func() types.Resource {
			rc := goodRoute()
			rc.VirtualHosts[0].Domains = nil
			return rc
		}, "virtual_hosts[0].domains"},
		{"match without prefix, path or regex", "route_config", route, firstRoute(func(r *routepb.Route) { r.Match.PathSpecifier = nil }), "virtual_hosts[0].routes[0].match"},
		{"regex that does not compile", "route_config", route, firstRoute(func(r *routepb.Route) {
			r.Match.PathSpecifier = &routepb.RouteMatch_SafeRegex{SafeRegex: &matcherpb.RegexMatcher{Regex: "/svc.(["}}
		}), "match.safe_regex.regex"},
		{"runtime_fraction with an invalid denominator", "route_config", route, firstRoute(func(r *routepb.Route) {
			r.Match.RuntimeFraction = &corepb.RuntimeFractionalPercent{DefaultValue: &typepb.FractionalPercent{Numerator: 5, Denominator: 7}}
		}), "runtime_fraction.default_value.denominator"},
		{"weighted clusters summing to 0", "route_config", route, firstRoute(func(r *routepb.Route) {
			r.GetRoute().ClusterSpecifier = &routepb.RouteAction_WeightedClusters{WeightedClusters: &routepb.WeightedCluster{Clusters: []*routepb.WeightedCluster_ClusterWeight{
				{Name: "a", Weight: wrapperspb.UInt32(0)}, {Name: "b", Weight: wrapperspb.UInt32(0)},
			}}}
		}), "weighted_clusters"},
		{"route action without a cluster", "route_config", route, firstRoute(func(r *routepb.Route) { r.GetRoute().ClusterSpecifier = nil }), "route: cluster_specifier"},
		{"route without an action", "route_config", route, firstRoute(func(r *routepb.Route) { r.Action = nil }), "routes[0]: action"},
		{"header range with start above end", "route_config", route, firstRoute(func(r *routepb.Route) {
			r.Match.Headers = []*routepb.HeaderMatcher{{Name: "x-version", HeaderMatchSpecifier: &routepb.HeaderMatcher_RangeMatch{RangeMatch: &typepb.Int64Range{Start: 10, End: 5}}}}
		}), "match.headers[0].range_match"},
		{"header matcher without a name", "route_config", route, firstRoute(func(r *routepb.Route) {
			r.Match.Headers = []*routepb.HeaderMatcher{{HeaderMatchSpecifier: &routepb.HeaderMatcher_ExactMatch{ExactMatch: "v1"}}}
		}), "match.headers[0].name"},
		{"negative route max_stream_duration", "route_config", route, firstRoute(func(r *routepb.Route) {
			r.GetRoute().MaxStreamDuration = &routepb.RouteAction_MaxStreamDuration{MaxStreamDuration: durationpb.New(-time.Second)}
		}), "max_stream_duration.max_stream_duration"},
		// CDS (gRFC A27, A29, A32, A52).
		{"cluster type STATIC", "cluster", cluster, clusterEdit(func(c *clusterpb.Cluster) {
			c.ClusterDiscoveryType = &clusterpb.Cluster_Type{Type: clusterpb.Cluster_STATIC}
		}), "type: unsupported discovery type STATIC"},
		{"lb_policy MAGLEV", "cluster", cluster, clusterEdit(func(c *clusterpb.Cluster) { c.LbPolicy = clusterpb.Cluster_MAGLEV }), "lb_policy"},
		{"load_balancing_policy with nothing supported", "cluster", cluster, clusterEdit(func(c *clusterpb.Cluster) {
			c.LoadBalancingPolicy = &clusterpb.LoadBalancingPolicy{Policies: []*clusterpb.LoadBalancingPolicy_Policy{{
				TypedExtensionConfig: &corepb.TypedExtensionConfig{Name: "maglev", TypedConfig: xdstest.MustAny(&maglevpb.Maglev{})},
			}}}
		}), "load_balancing_policy.policies"},
		{"eds_config not ADS", "cluster", cluster, clusterEdit(func(c *clusterpb.Cluster) { c.EdsClusterConfig.EdsConfig = pathConfigSource() }), "eds_cluster_config.eds_config"},
		{"EDS cluster without eds_cluster_config", "cluster", cluster, clusterEdit(func(c *clusterpb.Cluster) { c.EdsClusterConfig = nil }), "eds_cluster_config"},
		{"circuit breaker max_requests 0", "cluster", cluster, clusterEdit(func(c *clusterpb.Cluster) {
			c.CircuitBreakers = &clusterpb.CircuitBreakers{Thresholds: []*clusterpb.CircuitBreakers_Thresholds{{MaxRequests: wrapperspb.UInt32(0)}}}
		}), "circuit_breakers.thresholds[0].max_requests"},
		{"LOGICAL_DNS with two endpoints", "cluster", cluster, clusterEdit(func(c *clusterpb.Cluster) {
			c.ClusterDiscoveryType = &clusterpb.Cluster_Type{Type: clusterpb.Cluster_LOGICAL_DNS}
			c.LoadAssignment = xdstest.Endpoints(corpusCluster, "10.0.0.1:80", "10.0.0.2:80")
		}), "load_assignment.endpoints"},
		{"TLS names a provider not in the bootstrap", "cluster", cluster, upstreamTLSEdit(func(tc *tlspb.UpstreamTlsContext) {
			tc.CommonTlsContext.TlsCertificateProviderInstance.InstanceName = "vault"
		}), "tls_certificate_provider_instance.instance_name"},
		{"TLS without root provider", "cluster", cluster, upstreamTLSEdit(func(tc *tlspb.UpstreamTlsContext) {
			tc.CommonTlsContext.ValidationContextType = nil
		}), "common_tls_context: no root certificate provider"},
		{"SNI too long", "cluster", cluster, upstreamTLSEdit(func(tc *tlspb.UpstreamTlsContext) {
			tc.Sni = strings.Repeat("a", 300)
		}), "transport_socket.typed_config.sni"},
		{"unsupported transport socket", "cluster", cluster, clusterEdit(func(c *clusterpb.Cluster) {
			c.TransportSocket = &corepb.TransportSocket{Name: "envoy.transport_sockets.alts"}
		}), "transport_socket.name"},
		// EDS (gRFC A27).
		{"locality weight 0", "cluster_load_assignment", eds, endpointsEdit(func(e *endpointpb.ClusterLoadAssignment) {
			e.Endpoints[0].LoadBalancingWeight = wrapperspb.UInt32(0)
		}), "endpoints[0].load_balancing_weight"},
		{"endpoint without address", "cluster_load_assignment", eds, endpointsEdit(func(e *endpointpb.ClusterLoadAssignment) {
			e.Endpoints[0].LbEndpoints[0].GetEndpoint().Address = nil
		}), "lb_endpoints[0].endpoint.address.socket_address"},
		{"lb endpoint without endpoint", "cluster_load_assignment", eds, endpointsEdit(func(e *endpointpb.ClusterLoadAssignment) {
			e.Endpoints[0].LbEndpoints[1].HostIdentifier = nil
		}), "lb_endpoints[1].endpoint"},
		{"port 0", "cluster_load_assignment", eds, endpointsEdit(func(e *endpointpb.ClusterLoadAssignment) {
			e.Endpoints[0].LbEndpoints[0].GetEndpoint().Address = socketAddr("10.0.0.1", 0)
		}), "lb_endpoints[0].endpoint.address.socket_address.port_value"},
		{"duplicate endpoint address", "cluster_load_assignment", eds, endpointsEdit(func(e *endpointpb.ClusterLoadAssignment) {
			e.Endpoints[0].LbEndpoints[1].GetEndpoint().Address = socketAddr("10.0.0.1", 8080)
		}), "lb_endpoints[1].endpoint.address: duplicate address"},
		{"endpoint hostname instead of IP", "cluster_load_assignment", eds, endpointsEdit(func(e *endpointpb.ClusterLoadAssignment) {
			e.Endpoints[0].LbEndpoints[0].GetEndpoint().Address = socketAddr("svc.example", 8080)
		}), "socket_address.address"},
		{"priorities not contiguous", "cluster_load_assignment", eds, endpointsEdit(func(e *endpointpb.ClusterLoadAssignment) {
			e.Endpoints[0].Priority = 1
		}), "priority 0 is missing"},
		{"drop overload with an invalid denominator", "cluster_load_assignment", eds, endpointsEdit(func(e *endpointpb.ClusterLoadAssignment) {
			e.Policy = &endpointpb.ClusterLoadAssignment_Policy{DropOverloads: []*endpointpb.ClusterLoadAssignment_Policy_DropOverload{{
				Category: "throttle", DropPercentage: &typepb.FractionalPercent{Numerator: 1, Denominator: 9},
			}}}
		}), "policy.drop_overloads[0].drop_percentage.denominator"},
	}
}

// snapshotWith serves r as the only resource of its type, and whatever
// the other types need to stay valid.
func snapshotWith(t *testing.T, srv *xdstest.Server, node string, r types.Resource) string {
	t.Helper()
	var l, rc, c, e []types.Resource
	switch r.(type) {
	case *listenerpb.Listener:
		l = []types.Resource{r}
	case *routepb.RouteConfiguration:
		rc = []types.Resource{r}
	case *clusterpb.Cluster:
		c = []types.Resource{r}
	case *endpointpb.ClusterLoadAssignment:
		e = []types.Resource{r}
	default:
		t.Fatalf("unexpected resource %T", r)
	}
	return srv.SetResources(t, node, l, rc, c, e)
}

func resourceName(r types.Resource) string {
	switch r := r.(type) {
	case *listenerpb.Listener:
		return r.GetName()
	case *routepb.RouteConfiguration:
		return r.GetName()
	case *clusterpb.Cluster:
		return r.GetName()
	case *endpointpb.ClusterLoadAssignment:
		return r.GetClusterName()
	}
	return ""
}

// watchAny watches name with the watch for typ and returns a channel of
// its events as (value present, error, not found).
type anyEvent struct {
	value    bool
	err      error
	notFound bool
}

func watchAny(c *xdsclient.Client, typ, name string) (*events[anyEvent], func()) {
	ev := newEvents[anyEvent]()
	push := func(value bool, err error, nf bool) {
		ev.fn(xdsclient.Event[anyEvent]{Resource: anyEvent{value, err, nf}})
	}
	switch typ {
	case "listener":
		return ev, c.WatchListener(name, func(e xdsclient.Event[*xdsclient.Listener]) { push(e.Resource != nil, e.Err, e.NotFound) })
	case "route_config":
		return ev, c.WatchRouteConfig(name, func(e xdsclient.Event[*xdsclient.RouteConfig]) { push(e.Resource != nil, e.Err, e.NotFound) })
	case "cluster":
		return ev, c.WatchCluster(name, func(e xdsclient.Event[*xdsclient.Cluster]) { push(e.Resource != nil, e.Err, e.NotFound) })
	default:
		return ev, c.WatchEndpoints(name, func(e xdsclient.Event[*xdsclient.Endpoints]) { push(e.Resource != nil, e.Err, e.NotFound) })
	}
}

// TestInvalidCorpusIsNACKed serves each broken resource through a real
// go-control-plane server to a real client: the client must NACK it with
// an error_detail naming the field, tell the watcher, and keep serving
// the last good version.
func TestInvalidCorpusIsNACKed(t *testing.T) {
	corpus := invalidCorpus()
	if len(corpus) < 30 {
		t.Fatalf("corpus has %d cases, want at least 30", len(corpus))
	}
	for i, tc := range corpus {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testutil.Context(t)
			srv := xdstest.NewServer(t) // one per case, so NACKs cannot mix
			node := fmt.Sprintf("corpus-%d", i)
			good, bad := tc.good(), tc.bad()
			name := resourceName(good)
			goodVersion := snapshotWith(t, srv, node, good)
			bs := srv.Bootstrap(node)
			bs.CertificateProviders = map[string]xdsclient.CertificateProvider{xdstest.CertProvider: {
				PluginName:  xdsclient.PluginFileWatcher,
				FileWatcher: &xdsclient.FileWatcherConfig{CACertificateFile: "/unused/root.pem", RefreshInterval: time.Minute},
			}}
			c, err := xdsclient.New(bs, xdsclient.WithBackoff(fastBackoff))
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = c.Close() })
			evs, _ := watchAny(c, tc.typ, name)
			if ev := next(ctx, t, evs, nil); !ev.Resource.value {
				t.Fatalf("good resource not accepted: %+v", ev.Resource)
			}

			snapshotWith(t, srv, node, bad)
			ev := next(ctx, t, evs, nil).Resource
			if !errors.Is(ev.err, xdsclient.ErrResourceRejected) || !strings.Contains(ev.err.Error(), tc.field) || !strings.Contains(ev.err.Error(), name) {
				t.Fatalf("watcher error = %v, want a rejection naming %q and %q", ev.err, name, tc.field)
			}
			nack, err := srv.WaitForRequest(ctx, func(r *discoverypb.DiscoveryRequest) bool { return r.GetErrorDetail() != nil })
			if err == nil && (!strings.Contains(nack.GetErrorDetail().GetMessage(), tc.field) || nack.GetVersionInfo() != goodVersion) {
				t.Fatalf("NACK = %v, want version %q and a message naming %q", nack, goodVersion, tc.field)
			}
			if err != nil {
				t.Fatal(err)
			}
			rs := statusOf(t, c, tc.typ, name)
			if rs.Status != xdsclient.StatusNACKed || rs.Version != goodVersion || !strings.Contains(rs.Error.Error(), tc.field) {
				t.Fatalf("status = %+v, want NACKED with version %q in force", rs, goodVersion)
			}
			// The last good version keeps being served to new watchers.
			again, cancel := watchAny(c, tc.typ, name)
			defer cancel()
			if ev := next(ctx, t, again, nil); !ev.Resource.value {
				t.Fatalf("new watcher after NACK got %+v, want the last good version", ev.Resource)
			}
		})
	}
}
