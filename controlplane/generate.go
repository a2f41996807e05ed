package controlplane

import (
	"fmt"
	"net"
	"sort"
	"strconv"
	"strings"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	faultcommon "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/common/fault/v3"
	fault "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	router "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	envoytype "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
	networking "istio.io/api/networking/v1alpha3"
	security "istio.io/api/security/v1beta1"
)

// Names istiod uses in its proxyless output.
const (
	faultFilterName      = "envoy.filters.http.fault"
	routerFilterName     = "envoy.filters.http.router"
	hcmFilterName        = "envoy.filters.network.http_connection_manager"
	tlsTransportSocket   = "envoy.transport_sockets.tls"
	certProviderInstance = "default"
	rootCertName         = "ROOTCA"
	defaultRetryOn       = "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes"
)

// ClusterName is istiod's cluster name "outbound|<port>|<subset>|<host>".
func ClusterName(port uint32, subset, host string) string {
	return "outbound|" + strconv.FormatUint(uint64(port), 10) + "|" + subset + "|" + host
}

// generation holds what every node's snapshot shares.
type generation struct {
	trustDomain string
	cfg         configSet
	reg         *registry
	clusters    []types.Resource
	endpoints   []types.Resource
	sds         bool // TLS contexts name SDS secrets; see WithSDS

	pathNormalization PathNormalization // see WithPathNormalization
}

func newGeneration(td string, cfg configSet, reg *registry) *generation {
	return buildGeneration(&generation{trustDomain: td, cfg: cfg, reg: reg})
}

// buildGeneration fills g's shared clusters and endpoints.
func buildGeneration(g *generation) *generation {
	cfg, reg := g.cfg, g.reg
	for _, host := range reg.hosts() {
		svc := reg.get(host)
		dr := findDestinationRule(cfg, reg, host)
		for _, port := range svc.ports {
			g.addCluster(svc, port, dr, nil)
			for _, sub := range dr.GetSubsets() {
				g.addCluster(svc, port, dr, sub)
			}
		}
	}
	return g
}

func (g *generation) addCluster(svc *service, port uint32, dr *networking.DestinationRule, sub *networking.Subset) {
	name := ClusterName(port, sub.GetName(), svc.host)
	var eps []endpoint
	for _, e := range svc.endpoints {
		if labelsMatch(sub.GetLabels(), e.labels) {
			eps = append(eps, e)
		}
	}
	c := &cluster.Cluster{
		Name:                 name,
		ClusterDiscoveryType: &cluster.Cluster_Type{Type: cluster.Cluster_EDS},
		EdsClusterConfig:     &cluster.Cluster_EdsClusterConfig{EdsConfig: adsConfigSource(), ServiceName: name},
		LbPolicy:             cluster.Cluster_ROUND_ROBIN,
		ConnectTimeout:       durationpb.New(10 * time.Second),
	}
	policy := dr.GetTrafficPolicy()
	if sp := sub.GetTrafficPolicy(); sp != nil {
		policy = mergeTrafficPolicy(policy, sp)
	}
	applyTrafficPolicy(c, policy)
	if g.clusterUsesMTLS(svc, eps, policy) {
		c.TransportSocket = transportSocket(&tlsv3.UpstreamTlsContext{
			CommonTlsContext: g.tlsContext(sortedKeys(svc.sans)),
		})
	}
	g.clusters = append(g.clusters, c)
	g.endpoints = append(g.endpoints, loadAssignment(name, port, eps, policy.GetLoadBalancer().GetLocalityLbSetting()))
}

// mergeTrafficPolicy lets a subset's policy override its rule's, field by
// field, as Istio does.
func mergeTrafficPolicy(base, over *networking.TrafficPolicy) *networking.TrafficPolicy {
	if base == nil {
		return over
	}
	out := proto.Clone(base).(*networking.TrafficPolicy)
	if over.GetLoadBalancer() != nil {
		out.LoadBalancer = over.GetLoadBalancer()
	}
	if over.GetConnectionPool() != nil {
		out.ConnectionPool = over.GetConnectionPool()
	}
	if over.GetOutlierDetection() != nil {
		out.OutlierDetection = over.GetOutlierDetection()
	}
	if over.GetTls() != nil {
		out.Tls = over.GetTls()
	}
	return out
}

func applyTrafficPolicy(c *cluster.Cluster, tp *networking.TrafficPolicy) {
	if tp == nil {
		return
	}
	lb := tp.GetLoadBalancer()
	switch {
	case lb.GetConsistentHash() != nil:
		c.LbPolicy = cluster.Cluster_RING_HASH
	case lb.GetSimple() == networking.LoadBalancerSettings_LEAST_REQUEST:
		c.LbPolicy = cluster.Cluster_LEAST_REQUEST
	}
	if max := tp.GetConnectionPool().GetHttp().GetHttp2MaxRequests(); max > 0 {
		c.CircuitBreakers = &cluster.CircuitBreakers{Thresholds: []*cluster.CircuitBreakers_Thresholds{{
			Priority:    core.RoutingPriority_DEFAULT,
			MaxRequests: wrapperspb.UInt32(uint32(max)),
		}}}
	}
	if od := tp.GetOutlierDetection(); od != nil {
		out := &cluster.OutlierDetection{
			Interval:         od.GetInterval(),
			BaseEjectionTime: od.GetBaseEjectionTime(),
			// As istiod: Istio's outlier detection is consecutive errors only.
			EnforcingSuccessRate: wrapperspb.UInt32(0),
		}
		if od.GetConsecutive_5XxErrors() != nil {
			out.Consecutive_5Xx = od.GetConsecutive_5XxErrors()
			if od.GetConsecutive_5XxErrors().GetValue() > 0 {
				out.EnforcingConsecutive_5Xx = wrapperspb.UInt32(100)
			}
		}
		if od.GetConsecutiveGatewayErrors() != nil {
			out.ConsecutiveGatewayFailure = od.GetConsecutiveGatewayErrors()
		}
		if p := od.GetMaxEjectionPercent(); p > 0 {
			out.MaxEjectionPercent = wrapperspb.UInt32(uint32(p))
		}
		c.OutlierDetection = out
	}
}

// clusterUsesMTLS follows DestinationRule tls mode when set and otherwise
// auto-mTLS: TLS unless every destination workload has mTLS DISABLEd.
func (g *generation) clusterUsesMTLS(svc *service, eps []endpoint, tp *networking.TrafficPolicy) bool {
	if t := tp.GetTls(); t != nil {
		return t.GetMode() == networking.ClientTLSSettings_ISTIO_MUTUAL
	}
	if len(eps) == 0 {
		if len(svc.endpoints) > 0 {
			return svc.endpoints[0].inMesh
		}
		return mtlsMode(g.cfg, svc.namespace, nil) != security.PeerAuthentication_MutualTLS_DISABLE
	}
	for _, e := range eps {
		if e.inMesh && mtlsMode(g.cfg, e.namespace, e.labels) != security.PeerAuthentication_MutualTLS_DISABLE {
			return true
		}
	}
	return false
}

// loadAssignment groups eps by locality. A locality weighs the sum of its
// endpoints' weights (as istiod does), unless localityLbSetting distributes
// traffic from every locality ("from: '*'"): then localities get the
// weights of the "to" entries they match, and those matching none get no
// traffic. Per-client settings (other "from" values, failover) need the
// client's locality and are not applied.
func loadAssignment(name string, port uint32, eps []endpoint, lls *networking.LocalityLoadBalancerSetting) *endpointv3.ClusterLoadAssignment {
	cla := &endpointv3.ClusterLoadAssignment{ClusterName: name}
	byLocality := map[string]*endpointv3.LocalityLbEndpoints{}
	var distribute map[string]uint32
	for _, d := range lls.GetDistribute() {
		if d.GetFrom() == "*" {
			distribute = d.GetTo()
		}
	}
	for _, e := range eps {
		target, ok := e.ports[port]
		if !ok {
			continue
		}
		loc := byLocality[e.locality]
		if loc == nil {
			loc = &endpointv3.LocalityLbEndpoints{Locality: parseLocality(e.locality)}
			byLocality[e.locality] = loc
		}
		loc.LbEndpoints = append(loc.LbEndpoints, &endpointv3.LbEndpoint{
			HostIdentifier: &endpointv3.LbEndpoint_Endpoint{Endpoint: &endpointv3.Endpoint{
				Address: socketAddress(e.ip, target),
			}},
			HealthStatus:        core.HealthStatus_HEALTHY,
			LoadBalancingWeight: wrapperspb.UInt32(e.weight),
		})
		weight := loc.GetLoadBalancingWeight().GetValue() + e.weight
		loc.LoadBalancingWeight = wrapperspb.UInt32(weight)
	}
	for _, key := range sortedKeys(byLocality) {
		loc := byLocality[key]
		if distribute != nil {
			weight := uint32(0)
			for pattern, w := range distribute {
				if localityMatches(pattern, key) {
					weight = w
					break
				}
			}
			if weight == 0 {
				continue
			}
			loc.LoadBalancingWeight = wrapperspb.UInt32(weight)
		}
		cla.Endpoints = append(cla.Endpoints, loc)
	}
	return cla
}

// parseLocality turns Istio's "region/zone/subzone" into an Envoy locality.
func parseLocality(s string) *core.Locality {
	parts := strings.SplitN(s, "/", 3)
	loc := &core.Locality{Region: parts[0]}
	if len(parts) > 1 {
		loc.Zone = parts[1]
	}
	if len(parts) > 2 {
		loc.SubZone = parts[2]
	}
	return loc
}

// localityMatches matches "region/zone/subzone" against a pattern whose
// segments may be "*" (and whose trailing segments may be left out).
func localityMatches(pattern, locality string) bool {
	ps, ls := strings.Split(pattern, "/"), strings.Split(locality, "/")
	for i, p := range ps {
		if p == "*" {
			if i == len(ps)-1 {
				return true
			}
			continue
		}
		if i >= len(ls) || ls[i] != p {
			return false
		}
	}
	return true
}

// nodeResources builds one node's snapshot content: the shared clusters and
// endpoints, a client listener and route per service port, the short-name
// listeners the node asked for and its inbound listeners.
func (g *generation) nodeResources(n *nodeInfo, requested []string) map[string][]types.Resource {
	type clientListener struct {
		host string
		port uint32
	}
	canonical := map[string]clientListener{}
	extraDomains := map[string][]string{} // route name -> short names
	for _, host := range g.reg.hosts() {
		for _, port := range g.reg.get(host).ports {
			canonical[hostPort(host, port)] = clientListener{host, port}
		}
	}
	var listeners []types.Resource
	var inbound []string
	aliases := map[string]string{} // requested short name -> canonical name
	for _, name := range requested {
		if strings.HasPrefix(name, InboundListenerPrefix) {
			inbound = append(inbound, name)
			continue
		}
		if _, ok := canonical[name]; ok {
			continue
		}
		h, portStr, err := net.SplitHostPort(name)
		if err != nil {
			continue
		}
		port, err := strconv.ParseUint(portStr, 10, 16)
		if err != nil {
			continue
		}
		fq, known := g.reg.resolve(h, n.namespace)
		if !known || !g.reg.get(fq).hasPort(uint32(port)) {
			continue
		}
		target := hostPort(fq, uint32(port))
		aliases[name] = target
		extraDomains[target] = append(extraDomains[target], name)
	}
	var routes []types.Resource
	for _, name := range sortedKeys(canonical) {
		cl := canonical[name]
		listeners = append(listeners, clientListenerResource(name, name))
		routes = append(routes, g.routeConfig(cl.host, cl.port, extraDomains[name]))
	}
	for _, alias := range sortedKeys(aliases) {
		listeners = append(listeners, clientListenerResource(alias, aliases[alias]))
	}
	sort.Strings(inbound)
	for _, name := range inbound {
		if l := g.inboundListener(name, n); l != nil {
			listeners = append(listeners, l)
		}
	}
	return map[string][]types.Resource{
		resource.ListenerType: listeners,
		resource.RouteType:    routes,
		resource.ClusterType:  append([]types.Resource(nil), g.clusters...),
		resource.EndpointType: append([]types.Resource(nil), g.endpoints...),
	}
}

func hostPort(host string, port uint32) string {
	return net.JoinHostPort(host, strconv.FormatUint(uint64(port), 10))
}

func clientListenerResource(name, routeName string) *listener.Listener {
	manager := &hcm.HttpConnectionManager{
		StatPrefix: name,
		RouteSpecifier: &hcm.HttpConnectionManager_Rds{Rds: &hcm.Rds{
			ConfigSource:    adsConfigSource(),
			RouteConfigName: routeName,
		}},
		HttpFilters: []*hcm.HttpFilter{
			httpFilter(faultFilterName, &fault.HTTPFault{}),
			httpFilter(routerFilterName, &router.Router{}),
		},
	}
	return &listener.Listener{
		Name:        name,
		ApiListener: &listener.ApiListener{ApiListener: mustAny(manager)},
	}
}

func (g *generation) routeConfig(host string, port uint32, extraDomains []string) *route.RouteConfiguration {
	name := hostPort(host, port)
	domains := []string{host, name}
	sort.Strings(extraDomains)
	domains = append(domains, extraDomains...)
	var routes []*route.Route
	catchAll := false
	if o, vs := findVirtualService(g.cfg, g.reg, host); vs != nil {
		for i, hr := range vs.GetHttp() {
			matches := hr.GetMatch()
			if len(matches) == 0 {
				matches = []*networking.HTTPMatchRequest{nil}
			}
			for j, m := range matches {
				if m.GetPort() != 0 && m.GetPort() != port {
					continue
				}
				r := &route.Route{
					Name:   routeName(hr, i, j),
					Match:  routeMatch(m),
					Action: &route.Route_Route{Route: g.routeAction(o.key.namespace, hr, host, port)},
				}
				if f := hr.GetFault(); f != nil {
					r.TypedPerFilterConfig = map[string]*anypb.Any{faultFilterName: mustAny(faultConfig(f))}
				}
				routes = append(routes, r)
				if isCatchAll(m) {
					catchAll = true
				}
			}
		}
	}
	if !catchAll {
		routes = append(routes, &route.Route{
			Name:  "default",
			Match: &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"}},
			Action: &route.Route_Route{Route: &route.RouteAction{
				ClusterSpecifier: &route.RouteAction_Cluster{Cluster: ClusterName(port, "", host)},
				HashPolicy:       g.hashPolicy("", &networking.Destination{Host: host}),
			}},
		})
	}
	return &route.RouteConfiguration{
		Name: name,
		VirtualHosts: []*route.VirtualHost{{
			Name:    name,
			Domains: domains,
			Routes:  routes,
		}},
	}
}

func routeName(hr *networking.HTTPRoute, i, j int) string {
	if hr.GetName() != "" {
		return hr.GetName()
	}
	return fmt.Sprintf("http-%d-match-%d", i, j)
}

func isCatchAll(m *networking.HTTPMatchRequest) bool {
	if m == nil {
		return true
	}
	if len(m.GetHeaders()) > 0 {
		return false
	}
	u := m.GetUri()
	return u == nil || (u.GetPrefix() == "/" && u.GetExact() == "" && u.GetRegex() == "")
}

func routeMatch(m *networking.HTTPMatchRequest) *route.RouteMatch {
	rm := &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"}}
	if m == nil {
		return rm
	}
	switch u := m.GetUri().GetMatchType().(type) {
	case *networking.StringMatch_Exact:
		rm.PathSpecifier = &route.RouteMatch_Path{Path: u.Exact}
	case *networking.StringMatch_Prefix:
		rm.PathSpecifier = &route.RouteMatch_Prefix{Prefix: u.Prefix}
	case *networking.StringMatch_Regex:
		rm.PathSpecifier = &route.RouteMatch_SafeRegex{SafeRegex: &matcher.RegexMatcher{Regex: u.Regex}}
	}
	if m.GetIgnoreUriCase() {
		rm.CaseSensitive = wrapperspb.Bool(false)
	}
	for _, name := range sortedKeys(m.GetHeaders()) {
		sm := stringMatcher(m.GetHeaders()[name])
		if sm == nil {
			continue
		}
		rm.Headers = append(rm.Headers, &route.HeaderMatcher{
			Name:                 name,
			HeaderMatchSpecifier: &route.HeaderMatcher_StringMatch{StringMatch: sm},
		})
	}
	return rm
}

func stringMatcher(m *networking.StringMatch) *matcher.StringMatcher {
	switch v := m.GetMatchType().(type) {
	case *networking.StringMatch_Exact:
		return &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Exact{Exact: v.Exact}}
	case *networking.StringMatch_Prefix:
		return &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Prefix{Prefix: v.Prefix}}
	case *networking.StringMatch_Regex:
		return &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_SafeRegex{SafeRegex: &matcher.RegexMatcher{Regex: v.Regex}}}
	}
	return nil
}

// routeAction turns the route's destinations into one cluster or weighted
// clusters; a weight of 0 stays as a 0-weight leg.
func (g *generation) routeAction(ns string, hr *networking.HTTPRoute, host string, port uint32) *route.RouteAction {
	a := &route.RouteAction{}
	dests := hr.GetRoute()
	names := make([]string, len(dests))
	for i, d := range dests {
		dhost, _ := g.reg.resolve(d.GetDestination().GetHost(), ns)
		dport := d.GetDestination().GetPort().GetNumber()
		if dport == 0 {
			dport = port
			if svc := g.reg.get(dhost); dhost != host && svc != nil && len(svc.ports) == 1 {
				dport = svc.ports[0]
			}
		}
		names[i] = ClusterName(dport, d.GetDestination().GetSubset(), dhost)
	}
	if len(dests) == 1 {
		a.ClusterSpecifier = &route.RouteAction_Cluster{Cluster: names[0]}
	} else {
		wc := &route.WeightedCluster{}
		for i, d := range dests {
			wc.Clusters = append(wc.Clusters, &route.WeightedCluster_ClusterWeight{
				Name:   names[i],
				Weight: wrapperspb.UInt32(uint32(d.GetWeight())),
			})
		}
		a.ClusterSpecifier = &route.RouteAction_WeightedClusters{WeightedClusters: wc}
	}
	if t := hr.GetTimeout(); t != nil {
		a.Timeout = durationpb.New(t.AsDuration())
		a.MaxStreamDuration = &route.RouteAction_MaxStreamDuration{MaxStreamDuration: durationpb.New(t.AsDuration())}
	}
	if len(dests) > 0 {
		a.HashPolicy = g.hashPolicy(ns, dests[0].GetDestination())
	}
	if r := hr.GetRetries(); r != nil && r.GetAttempts() > 0 {
		on := r.GetRetryOn()
		if on == "" {
			on = defaultRetryOn
		}
		rp := &route.RetryPolicy{RetryOn: on, NumRetries: wrapperspb.UInt32(uint32(r.GetAttempts()))}
		if pt := r.GetPerTryTimeout(); pt != nil {
			rp.PerTryTimeout = durationpb.New(pt.AsDuration())
		}
		a.RetryPolicy = rp
	}
	return a
}

func faultConfig(f *networking.HTTPFaultInjection) *fault.HTTPFault {
	out := &fault.HTTPFault{}
	if d := f.GetDelay(); d != nil {
		out.Delay = &faultcommon.FaultDelay{
			FaultDelaySecifier: &faultcommon.FaultDelay_FixedDelay{FixedDelay: durationpb.New(d.GetFixedDelay().AsDuration())},
			Percentage:         percent(d.GetPercentage()),
		}
	}
	if a := f.GetAbort(); a != nil {
		abort := &fault.FaultAbort{Percentage: percent(a.GetPercentage())}
		if s := a.GetGrpcStatus(); s != "" {
			code, _ := grpcStatusCode(s)
			abort.ErrorType = &fault.FaultAbort_GrpcStatus{GrpcStatus: uint32(code)}
		} else {
			abort.ErrorType = &fault.FaultAbort_HttpStatus{HttpStatus: uint32(a.GetHttpStatus())}
		}
		out.Abort = abort
	}
	return out
}

// percent converts an Istio percentage (unset = 100%) to parts per million.
func percent(p *networking.Percent) *envoytype.FractionalPercent {
	v := 100.0
	if p != nil {
		v = p.GetValue()
	}
	return &envoytype.FractionalPercent{
		Numerator:   uint32(v * 10000),
		Denominator: envoytype.FractionalPercent_MILLION,
	}
}

func grpcStatusCode(name string) (codes.Code, bool) {
	var c codes.Code
	if err := c.UnmarshalJSON([]byte(strconv.Quote(strings.ToUpper(name)))); err != nil {
		return 0, false
	}
	return c, true
}

// inboundListener builds the server-side listener for "<prefix><ip>:<port>".
func (g *generation) inboundListener(name string, n *nodeInfo) *listener.Listener {
	ip, port, err := parseHostPort(strings.TrimPrefix(name, InboundListenerPrefix))
	if err != nil {
		return nil
	}
	filters := append(g.rbacFilters(n), httpFilter(routerFilterName, &router.Router{}))
	newChain := func(name string) *listener.FilterChain {
		manager := &hcm.HttpConnectionManager{
			StatPrefix: "inbound",
			RouteSpecifier: &hcm.HttpConnectionManager_RouteConfig{RouteConfig: &route.RouteConfiguration{
				Name: "inbound",
				VirtualHosts: []*route.VirtualHost{{
					Name:    "inbound|http|" + strconv.FormatUint(uint64(port), 10),
					Domains: []string{"*"},
					Routes: []*route.Route{{
						Match:  &route.RouteMatch{PathSpecifier: &route.RouteMatch_Prefix{Prefix: "/"}},
						Action: &route.Route_NonForwardingAction{NonForwardingAction: &route.NonForwardingAction{}},
					}},
				}},
			}},
			HttpFilters: filters,
		}
		g.setPathNormalization(manager)
		return &listener.FilterChain{
			Name: name,
			Filters: []*listener.Filter{{
				Name:       hcmFilterName,
				ConfigType: &listener.Filter_TypedConfig{TypedConfig: mustAny(manager)},
			}},
		}
	}
	mtls := func() *listener.FilterChain {
		chain := newChain("inbound-mtls")
		chain.TransportSocket = transportSocket(&tlsv3.DownstreamTlsContext{
			CommonTlsContext:         g.tlsContext(nil),
			RequireClientCertificate: wrapperspb.Bool(true),
		})
		return chain
	}
	var chains []*listener.FilterChain
	switch mtlsMode(g.cfg, n.namespace, n.labels) {
	case security.PeerAuthentication_MutualTLS_DISABLE:
		chains = []*listener.FilterChain{newChain("inbound-plaintext")}
	case security.PeerAuthentication_MutualTLS_STRICT:
		chains = []*listener.FilterChain{mtls()}
	default:
		// PERMISSIVE, as Envoy serves it: the client's first bytes pick
		// the chain, mTLS for TLS clients (mesh clients use auto-mTLS) and
		// plaintext for the rest.
		tlsChain := mtls()
		tlsChain.FilterChainMatch = &listener.FilterChainMatch{TransportProtocol: "tls"}
		plain := newChain("inbound-plaintext")
		plain.FilterChainMatch = &listener.FilterChainMatch{TransportProtocol: "raw_buffer"}
		chains = []*listener.FilterChain{tlsChain, plain}
	}
	return &listener.Listener{
		Name:             name,
		Address:          socketAddress(ip, port),
		TrafficDirection: core.TrafficDirection_INBOUND,
		FilterChains:     chains,
	}
}

// setPathNormalization writes the inbound HCM fields that Istio writes for
// its meshConfig.pathNormalization option.
func (g *generation) setPathNormalization(manager *hcm.HttpConnectionManager) {
	manager.NormalizePath = wrapperspb.Bool(true)
	switch g.pathNormalization {
	case PathNormalizationMergeSlashes:
		manager.MergeSlashes = true
	case PathNormalizationDecodeAndMergeSlashes:
		manager.MergeSlashes = true
		manager.PathWithEscapedSlashesAction = hcm.HttpConnectionManager_UNESCAPE_AND_FORWARD
	}
}

// commonTLSContext names the bootstrap's "default" certificate provider for
// the workload's identity and "ROOTCA" for trust, as istiod does. Each is
// written in both the current fields (tls_certificate_provider_instance,
// ca_certificate_provider_instance: what grpc-go reads first) and istiod's
// deprecated ones (tls_certificate_certificate_provider_instance,
// validation_context_certificate_provider_instance), so older and newer
// proxyless clients agree.
func commonTLSContext(sans []string) *tlsv3.CommonTlsContext {
	validation := &tlsv3.CertificateValidationContext{
		CaCertificateProviderInstance: &tlsv3.CertificateProviderPluginInstance{
			InstanceName: certProviderInstance, CertificateName: rootCertName,
		},
	}
	for _, san := range sans {
		validation.MatchSubjectAltNames = append(validation.MatchSubjectAltNames, &matcher.StringMatcher{
			MatchPattern: &matcher.StringMatcher_Exact{Exact: san},
		})
	}
	return &tlsv3.CommonTlsContext{
		TlsCertificateProviderInstance: &tlsv3.CertificateProviderPluginInstance{
			InstanceName: certProviderInstance, CertificateName: "default",
		},
		TlsCertificateCertificateProviderInstance: &tlsv3.CommonTlsContext_CertificateProviderInstance{
			InstanceName: certProviderInstance, CertificateName: "default",
		},
		ValidationContextType: &tlsv3.CommonTlsContext_CombinedValidationContext{
			CombinedValidationContext: &tlsv3.CommonTlsContext_CombinedCertificateValidationContext{
				DefaultValidationContext: validation,
				ValidationContextCertificateProviderInstance: &tlsv3.CommonTlsContext_CertificateProviderInstance{
					InstanceName: certProviderInstance, CertificateName: rootCertName,
				},
			},
		},
	}
}

func transportSocket(m proto.Message) *core.TransportSocket {
	return &core.TransportSocket{
		Name:       tlsTransportSocket,
		ConfigType: &core.TransportSocket_TypedConfig{TypedConfig: mustAny(m)},
	}
}

func httpFilter(name string, m proto.Message) *hcm.HttpFilter {
	return &hcm.HttpFilter{Name: name, ConfigType: &hcm.HttpFilter_TypedConfig{TypedConfig: mustAny(m)}}
}

func adsConfigSource() *core.ConfigSource {
	return &core.ConfigSource{
		ConfigSourceSpecifier: &core.ConfigSource_Ads{Ads: &core.AggregatedConfigSource{}},
		ResourceApiVersion:    core.ApiVersion_V3,
	}
}

func socketAddress(ip string, port uint32) *core.Address {
	return &core.Address{Address: &core.Address_SocketAddress{SocketAddress: &core.SocketAddress{
		Protocol:      core.SocketAddress_TCP,
		Address:       ip,
		PortSpecifier: &core.SocketAddress_PortValue{PortValue: port},
	}}}
}

// mustAny packs messages we build ourselves. Packing fails only on invalid
// UTF-8, which validated input cannot carry; rather than panic we then send
// an empty message of the right type, which clients reject visibly (NACK).
func mustAny(m proto.Message) *anypb.Any {
	a, err := anypb.New(m)
	if err != nil {
		return &anypb.Any{TypeUrl: "type.googleapis.com/" + string(m.ProtoReflect().Descriptor().FullName())}
	}
	return a
}

// hashPolicy is the route hash policy for a destination whose
// DestinationRule (or subset) asks for consistentHash, as istiod writes it
// for proxyless clients: httpHeaderName hashes that header,
// httpQueryParameterName that parameter, and useSourceIp the client
// channel's ID (gRPC's filter_state key io.grpc.channel_id), which is what
// keeps one client on one endpoint. Cookies are not supported by gRPC and
// are skipped.
func (g *generation) hashPolicy(ns string, d *networking.Destination) []*route.RouteAction_HashPolicy {
	host, _ := g.reg.resolve(d.GetHost(), ns)
	dr := findDestinationRule(g.cfg, g.reg, host)
	policy := dr.GetTrafficPolicy()
	for _, sub := range dr.GetSubsets() {
		if sub.GetName() == d.GetSubset() && sub.GetTrafficPolicy() != nil {
			policy = mergeTrafficPolicy(policy, sub.GetTrafficPolicy())
		}
	}
	ch := policy.GetLoadBalancer().GetConsistentHash()
	switch {
	case ch == nil:
		return nil
	case ch.GetHttpHeaderName() != "":
		return []*route.RouteAction_HashPolicy{{PolicySpecifier: &route.RouteAction_HashPolicy_Header_{
			Header: &route.RouteAction_HashPolicy_Header{HeaderName: ch.GetHttpHeaderName()}}}}
	case ch.GetHttpQueryParameterName() != "":
		return []*route.RouteAction_HashPolicy{{PolicySpecifier: &route.RouteAction_HashPolicy_QueryParameter_{
			QueryParameter: &route.RouteAction_HashPolicy_QueryParameter{Name: ch.GetHttpQueryParameterName()}}}}
	case ch.GetUseSourceIp():
		return []*route.RouteAction_HashPolicy{{PolicySpecifier: &route.RouteAction_HashPolicy_FilterState_{
			FilterState: &route.RouteAction_HashPolicy_FilterState{Key: "io.grpc.channel_id"}}}}
	}
	return nil
}
