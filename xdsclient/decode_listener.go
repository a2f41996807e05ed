package xdsclient

import (
	"fmt"
	"net/netip"
	"strings"

	"google.golang.org/protobuf/types/known/anypb"

	corepb "mesh/xdsclient/internal/lite/envoy/config/core/v3"
	listenerpb "mesh/xdsclient/internal/lite/envoy/config/listener/v3"
	hcmpb "mesh/xdsclient/internal/lite/envoy/extensions/filters/network/http_connection_manager/v3"
	tlspb "mesh/xdsclient/internal/lite/envoy/extensions/transport_sockets/tls/v3"
	udpatypepb "mesh/xdsclient/internal/lite/udpa/type/v1"
	xdstypepb "mesh/xdsclient/internal/lite/xds/type/v3"
)

// decodeListener unmarshals and validates an LDS resource. The returned
// name is set whenever the proto could be read, even if validation fails,
// so the caller can tell watchers of that name.
func (dc *decodeContext) decodeListener(a *anypb.Any) (string, *Listener, error) {
	pb := &listenerpb.Listener{}
	if err := unmarshalAny(a, pb); err != nil {
		return "", nil, fmt.Errorf("listener: cannot unmarshal %s: %w", a.GetTypeUrl(), err)
	}
	dc.decoded(pb)
	name := pb.GetName()
	if name == "" {
		return "", nil, fmt.Errorf("listener: name: missing")
	}
	l, err := dc.listener(pb)
	if err != nil {
		return name, nil, fmt.Errorf("listener %q: %w", name, err)
	}
	return name, l, nil
}

func (dc *decodeContext) listener(pb *listenerpb.Listener) (*Listener, error) {
	l := &Listener{Name: pb.GetName()}
	if api := pb.GetApiListener(); api != nil {
		hcm, err := dc.hcmFromAny(api.GetApiListener(), "api_listener.api_listener", false)
		if err != nil {
			return nil, err
		}
		l.HTTP = hcm
		return l, nil
	}
	if pb.GetAddress() == nil {
		return nil, fmt.Errorf("address: missing (a listener needs an api_listener or an address)")
	}
	// gRFC A36: a server cannot run listener filters or redirect.
	if len(pb.GetListenerFilters()) > 0 {
		return nil, fmt.Errorf("listener_filters: must be empty (gRFC A36)")
	}
	if pb.GetUseOriginalDst().GetValue() {
		return nil, fmt.Errorf("use_original_dst: must not be true (gRFC A36)")
	}
	addr, err := socketAddress(pb.GetAddress(), "address", true)
	if err != nil {
		return nil, err
	}
	l.Address = addr
	if len(pb.GetFilterChains()) == 0 && pb.GetDefaultFilterChain() == nil {
		return nil, fmt.Errorf("filter_chains: a server listener needs at least one filter chain or a default_filter_chain")
	}
	for i, fc := range pb.GetFilterChains() {
		chain, err := dc.filterChain(fc, fmt.Sprintf("filter_chains[%d]", i))
		if err != nil {
			return nil, err
		}
		l.FilterChains = append(l.FilterChains, chain)
	}
	if err := duplicateChainMatch(l.FilterChains); err != nil {
		return nil, err
	}
	if fc := pb.GetDefaultFilterChain(); fc != nil {
		chain, err := dc.filterChain(fc, "default_filter_chain")
		if err != nil {
			return nil, err
		}
		l.DefaultFilterChain = &chain
	}
	return l, nil
}

func (dc *decodeContext) filterChain(fc *listenerpb.FilterChain, path string) (FilterChain, error) {
	out := FilterChain{Name: fc.GetName()}
	m := fc.GetFilterChainMatch()
	if m != nil {
		out.Match.DestinationPort = m.GetDestinationPort().GetValue()
		for i, r := range m.GetPrefixRanges() {
			p, err := cidrRange(r, fmt.Sprintf("%s.filter_chain_match.prefix_ranges[%d]", path, i))
			if err != nil {
				return out, err
			}
			out.Match.PrefixRanges = append(out.Match.PrefixRanges, p)
		}
		switch m.GetSourceType() {
		case listenerpb.FilterChainMatch_ANY:
			out.Match.SourceType = SourceAny
		case listenerpb.FilterChainMatch_SAME_IP_OR_LOOPBACK:
			out.Match.SourceType = SourceSameIPOrLoopback
		case listenerpb.FilterChainMatch_EXTERNAL:
			out.Match.SourceType = SourceExternal
		default:
			return out, fmt.Errorf("%s.filter_chain_match.source_type: unknown value %d", path, m.GetSourceType())
		}
		for i, r := range m.GetSourcePrefixRanges() {
			p, err := cidrRange(r, fmt.Sprintf("%s.filter_chain_match.source_prefix_ranges[%d]", path, i))
			if err != nil {
				return out, err
			}
			out.Match.SourcePrefixRanges = append(out.Match.SourcePrefixRanges, p)
		}
		for i, p := range m.GetSourcePorts() {
			if p == 0 || p > 65535 {
				return out, fmt.Errorf("%s.filter_chain_match.source_ports[%d]: %d is not a valid port", path, i, p)
			}
		}
		out.Match.SourcePorts = append([]uint32(nil), m.GetSourcePorts()...)
		switch tp := m.GetTransportProtocol(); tp {
		case "", "raw_buffer", "tls":
			out.Match.TransportProtocol = tp
		default:
			return out, fmt.Errorf("%s.filter_chain_match.transport_protocol: unsupported %q", path, tp)
		}
		out.Match.ApplicationProtocols = append([]string(nil), m.GetApplicationProtocols()...)
	}

	filters := fc.GetFilters()
	if len(filters) != 1 {
		return out, fmt.Errorf("%s.filters: want exactly one HttpConnectionManager filter, got %d filters", path, len(filters))
	}
	f := filters[0]
	tc := f.GetTypedConfig()
	if tc == nil || tc.GetTypeUrl() != typeURLHCM {
		return out, fmt.Errorf("%s.filters: filter %q is not an HttpConnectionManager (typed_config %q)", path, f.GetName(), tc.GetTypeUrl())
	}
	hcm, err := dc.hcmFromAny(tc, fmt.Sprintf("%s.filters[0].typed_config", path), true)
	if err != nil {
		return out, err
	}
	out.HTTP = hcm

	if ts := fc.GetTransportSocket(); ts != nil {
		tls, err := dc.downstreamTLS(ts, path+".transport_socket")
		if err != nil {
			return out, err
		}
		out.TLS = tls
	}
	return out, nil
}

func (dc *decodeContext) downstreamTLS(ts *corepb.TransportSocket, path string) (*DownstreamTLS, error) {
	tc := ts.GetTypedConfig()
	if tc == nil {
		if ts.GetName() == transportSocketTLS {
			return nil, fmt.Errorf("%s.typed_config: missing", path)
		}
		return nil, fmt.Errorf("%s.name: unsupported transport socket %q", path, ts.GetName())
	}
	if tc.GetTypeUrl() != typeURLDownstreamTLS {
		return nil, fmt.Errorf("%s.typed_config: unsupported type %q", path, tc.GetTypeUrl())
	}
	pb := &tlspb.DownstreamTlsContext{}
	if err := unmarshalAny(tc, pb); err != nil {
		return nil, fmt.Errorf("%s.typed_config: %w", path, err)
	}
	path += ".typed_config.common_tls_context"
	ctx := pb.GetCommonTlsContext()
	if ctx == nil {
		return nil, fmt.Errorf("%s: missing", path)
	}
	id, err := dc.identityProvider(ctx, path)
	if err != nil {
		return nil, err
	}
	if id == nil {
		return nil, fmt.Errorf("%s.tls_certificate_provider_instance: missing, and no tls_certificate_sds_secret_configs (a server needs its own certificate)", path)
	}
	v, err := dc.validationContext(ctx, path)
	if err != nil {
		return nil, err
	}
	out := &DownstreamTLS{Identity: *id, Roots: v.roots, RequireClientCertificate: pb.GetRequireClientCertificate().GetValue()}
	if out.RequireClientCertificate && out.Roots == nil {
		return nil, fmt.Errorf("%s: require_client_certificate is set but no root certificate provider is configured", path)
	}
	return out, nil
}

// hcmFromAny decodes an HttpConnectionManager. server selects the rules of
// gRFC A36 (server side) instead of A27/A39 (client side).
func (dc *decodeContext) hcmFromAny(a *anypb.Any, path string, server bool) (*HTTPConnectionManager, error) {
	if a == nil {
		return nil, fmt.Errorf("%s: missing", path)
	}
	if a.GetTypeUrl() != typeURLHCM {
		return nil, fmt.Errorf("%s: want an HttpConnectionManager, got %q", path, a.GetTypeUrl())
	}
	pb := &hcmpb.HttpConnectionManager{}
	if err := unmarshalAny(a, pb); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	// gRFC A41: RBAC cannot tell the peer's address from one a proxy
	// forwarded, so no hop may be trusted to forward it.
	if pb.GetXffNumTrustedHops() != 0 {
		return nil, fmt.Errorf("%s.xff_num_trusted_hops: must be 0 (gRFC A41), got %d", path, pb.GetXffNumTrustedHops())
	}
	if len(pb.GetOriginalIpDetectionExtensions()) > 0 {
		return nil, fmt.Errorf("%s.original_ip_detection_extensions: must be empty (gRFC A41)", path)
	}
	out := &HTTPConnectionManager{}
	switch rs := pb.GetRouteSpecifier().(type) {
	case *hcmpb.HttpConnectionManager_Rds:
		cs := rs.Rds.GetConfigSource()
		if cs.GetAds() == nil && cs.GetSelf() == nil {
			return nil, fmt.Errorf("%s.rds.config_source: must be ads or self", path)
		}
		if rs.Rds.GetRouteConfigName() == "" {
			return nil, fmt.Errorf("%s.rds.route_config_name: missing", path)
		}
		out.RouteConfigName = rs.Rds.GetRouteConfigName()
	case *hcmpb.HttpConnectionManager_RouteConfig:
		rc, err := dc.routeConfig(rs.RouteConfig, path+".route_config", server)
		if err != nil {
			return nil, err
		}
		out.RouteConfig = rc
	case nil:
		return nil, fmt.Errorf("%s: route_specifier: missing (want rds or route_config)", path)
	default:
		return nil, fmt.Errorf("%s: route_specifier: unsupported %s", path, oneofField(pb, "route_specifier"))
	}
	if d := pb.GetCommonHttpProtocolOptions().GetMaxStreamDuration(); d != nil {
		if err := d.CheckValid(); err != nil {
			return nil, fmt.Errorf("%s.common_http_protocol_options.max_stream_duration: %w", path, err)
		}
		out.MaxStreamDuration = d.AsDuration()
	}
	filters, err := dc.httpFilters(pb.GetHttpFilters(), path+".http_filters")
	if err != nil {
		return nil, err
	}
	out.HTTPFilters = filters
	if np := pb.GetNormalizePath(); np != nil {
		v := np.GetValue()
		out.PathNormalization.NormalizePath = &v
	}
	out.PathNormalization.MergeSlashes = pb.GetMergeSlashes()
	switch a := pb.GetPathWithEscapedSlashesAction(); a {
	case hcmpb.HttpConnectionManager_IMPLEMENTATION_SPECIFIC_DEFAULT:
		out.PathNormalization.EscapedSlashes = EscapedSlashesDefault
	case hcmpb.HttpConnectionManager_KEEP_UNCHANGED:
		out.PathNormalization.EscapedSlashes = EscapedSlashesKeep
	case hcmpb.HttpConnectionManager_REJECT_REQUEST:
		out.PathNormalization.EscapedSlashes = EscapedSlashesReject
	case hcmpb.HttpConnectionManager_UNESCAPE_AND_REDIRECT:
		out.PathNormalization.EscapedSlashes = EscapedSlashesUnescapeAndRedirect
	case hcmpb.HttpConnectionManager_UNESCAPE_AND_FORWARD:
		out.PathNormalization.EscapedSlashes = EscapedSlashesUnescapeAndForward
	default:
		return nil, fmt.Errorf("%s.path_with_escaped_slashes_action: unknown value %d", path, a)
	}
	return out, nil
}

// knownHTTPFilters are the filter types mesh implements (gRFC A39, A33, A41).
var knownHTTPFilters = map[string]bool{typeURLRouter: true, typeURLFault: true, typeURLRBAC: true}

func (dc *decodeContext) httpFilters(filters []*hcmpb.HttpFilter, path string) ([]HTTPFilter, error) {
	if len(filters) == 0 {
		return nil, fmt.Errorf("%s: missing (the router filter is required)", path)
	}
	seen := map[string]bool{}
	var out []HTTPFilter
	for i, f := range filters {
		fpath := fmt.Sprintf("%s[%d]", path, i)
		if f.GetName() == "" {
			return nil, fmt.Errorf("%s.name: missing", fpath)
		}
		if seen[f.GetName()] {
			return nil, fmt.Errorf("%s.name: duplicate filter name %q", fpath, f.GetName())
		}
		seen[f.GetName()] = true
		if f.GetConfigDiscovery() != nil {
			return nil, fmt.Errorf("%s.config_discovery: unsupported", fpath)
		}
		tc := f.GetTypedConfig()
		if tc == nil {
			if f.GetIsOptional() {
				dc.ignore(fpath, fmt.Sprintf("optional filter %q has no typed_config", f.GetName()))
				continue
			}
			return nil, fmt.Errorf("%s.typed_config: missing for filter %q", fpath, f.GetName())
		}
		typeURL, err := filterTypeURL(tc)
		if err != nil {
			return nil, fmt.Errorf("%s.typed_config: %w", fpath, err)
		}
		if !knownHTTPFilters[typeURL] {
			if f.GetIsOptional() {
				dc.ignore(fpath, fmt.Sprintf("unsupported optional filter %q (%s)", f.GetName(), typeURL))
				continue
			}
			return nil, fmt.Errorf("%s.typed_config: unsupported filter type %q for filter %q", fpath, typeURL, f.GetName())
		}
		if typeURL == typeURLRouter && i != len(filters)-1 {
			return nil, fmt.Errorf("%s: the router filter must be last", fpath)
		}
		hf := HTTPFilter{Name: f.GetName(), TypeURL: typeURL}
		if typeURL == typeURLRBAC {
			rbac, err := decodeRBACFilter(tc, fpath+".typed_config")
			if err != nil {
				return nil, err
			}
			hf.Config = rbac
		}
		if typeURL == typeURLFault {
			if tc.GetTypeUrl() != typeURLFault {
				return nil, fmt.Errorf("%s.typed_config: the fault filter's config must be an HTTPFault, not a TypedStruct", fpath)
			}
			f, err := decodeFault(tc, fpath+".typed_config")
			if err != nil {
				return nil, err
			}
			hf.Config = f
		}
		out = append(out, hf)
	}
	if len(out) == 0 || out[len(out)-1].TypeURL != typeURLRouter {
		return nil, fmt.Errorf("%s: the last filter must be the router (%s)", path, typeURLRouter)
	}
	return out, nil
}

// filterTypeURL returns the filter config type, looking inside the
// TypedStruct wrappers some control planes use.
func filterTypeURL(a *anypb.Any) (string, error) {
	var typeURL string
	switch a.GetTypeUrl() {
	case typeURLTypedStruct:
		ts := &xdstypepb.TypedStruct{}
		if err := unmarshalAny(a, ts); err != nil {
			return "", fmt.Errorf("invalid TypedStruct: %w", err)
		}
		typeURL = ts.GetTypeUrl()
	case typeURLUDPATypedStrc:
		ts := &udpatypepb.TypedStruct{}
		if err := unmarshalAny(a, ts); err != nil {
			return "", fmt.Errorf("invalid TypedStruct: %w", err)
		}
		typeURL = ts.GetTypeUrl()
	default:
		return a.GetTypeUrl(), nil
	}
	if !strings.HasPrefix(typeURL, "type.googleapis.com/") {
		typeURL = "type.googleapis.com/" + typeURL[strings.LastIndex(typeURL, "/")+1:]
	}
	return typeURL, nil
}

// duplicateChainMatch rejects filter chains whose matches overlap exactly
// (gRFC A36): each match is expanded to the tuples of destination prefix,
// source type, source prefix and source port it covers, and no tuple may
// belong to two chains, or the most specific chain would not be unique.
// Chains that can never match (a destination port, server names, a
// transport protocol other than raw_buffer, application protocols) are
// left out, as A36 drops them.
func duplicateChainMatch(chains []FilterChain) error {
	seen := map[string]int{}
	for i, fc := range chains {
		m := fc.Match
		if m.DestinationPort != 0 || (m.TransportProtocol != "" && m.TransportProtocol != "raw_buffer") || len(m.ApplicationProtocols) > 0 {
			continue
		}
		for _, dst := range prefixesOrAny(m.PrefixRanges) {
			for _, src := range prefixesOrAny(m.SourcePrefixRanges) {
				ports := m.SourcePorts
				if len(ports) == 0 {
					ports = []uint32{0}
				}
				for _, port := range ports {
					key := fmt.Sprintf("%s|%d|%s|%d", dst, m.SourceType, src, port)
					if j, dup := seen[key]; dup {
						return fmt.Errorf("filter_chains[%d].filter_chain_match: duplicates the match of filter_chains[%d] (gRFC A36)", i, j)
					}
					seen[key] = i
				}
			}
		}
	}
	return nil
}

func prefixesOrAny(ps []netip.Prefix) []string {
	if len(ps) == 0 {
		return []string{"any"}
	}
	out := make([]string, len(ps))
	for i, p := range ps {
		out[i] = p.Masked().String()
	}
	return out
}
