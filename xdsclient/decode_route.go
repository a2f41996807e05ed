package xdsclient

import (
	"fmt"
	"math"
	"time"

	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"

	routepb "mesh/xdsclient/internal/lite/envoy/config/route/v3"
)

func (dc *decodeContext) decodeRouteConfig(a *anypb.Any) (string, *RouteConfig, error) {
	pb := &routepb.RouteConfiguration{}
	if err := unmarshalAny(a, pb); err != nil {
		return "", nil, fmt.Errorf("route_config: cannot unmarshal %s: %w", a.GetTypeUrl(), err)
	}
	dc.decoded(pb)
	name := pb.GetName()
	if name == "" {
		return "", nil, fmt.Errorf("route_config: name: missing")
	}
	rc, err := dc.routeConfig(pb, "", false)
	if err != nil {
		return name, nil, fmt.Errorf("route_config %q: %w", name, err)
	}
	return name, rc, nil
}

// routeConfig validates a RouteConfiguration; path is "" for an RDS
// resource and the field path for an inline one.
func (dc *decodeContext) routeConfig(pb *routepb.RouteConfiguration, path string, server bool) (*RouteConfig, error) {
	rc := &RouteConfig{Name: pb.GetName()}
	for i, vh := range pb.GetVirtualHosts() {
		vpath := joinPath(path, fmt.Sprintf("virtual_hosts[%d]", i))
		if len(vh.GetDomains()) == 0 {
			return nil, fmt.Errorf("%s.domains: missing", vpath)
		}
		for j, d := range vh.GetDomains() {
			if d == "" {
				return nil, fmt.Errorf("%s.domains[%d]: empty domain", vpath, j)
			}
		}
		out := VirtualHost{Name: vh.GetName(), Domains: append([]string(nil), vh.GetDomains()...)}
		vhRetry, err := dc.retryPolicy(vh.GetRetryPolicy(), vpath+".retry_policy")
		if err != nil {
			return nil, err
		}
		vhOverrides, err := dc.filterOverrides(vh.GetTypedPerFilterConfig(), vpath+".typed_per_filter_config")
		if err != nil {
			return nil, err
		}
		for j, r := range vh.GetRoutes() {
			rpath := fmt.Sprintf("%s.routes[%d]", vpath, j)
			route, keep, err := dc.route(r, rpath, server)
			if err != nil {
				return nil, err
			}
			if keep {
				route.FilterOverrides = mergeOverrides(vhOverrides, route.FilterOverrides)
				if route.Action.RetryPolicy == nil && !route.NonForwarding {
					route.Action.RetryPolicy = vhRetry // a route's own policy wins
				}
				out.Routes = append(out.Routes, route)
			}
		}
		rc.VirtualHosts = append(rc.VirtualHosts, out)
	}
	return rc, nil
}

// route decodes one route. keep is false for actions mesh does not
// implement (redirect, direct_response, filter_action): such routes are
// skipped with a logged warning, so the next route (or no route) matches.
func (dc *decodeContext) route(r *routepb.Route, path string, server bool) (Route, bool, error) {
	out := Route{Name: r.GetName()}
	m := r.GetMatch()
	if m == nil {
		return out, false, fmt.Errorf("%s.match: missing", path)
	}
	mpath := path + ".match"
	switch ps := m.GetPathSpecifier().(type) {
	case *routepb.RouteMatch_Prefix:
		out.Match.Prefix = ps.Prefix
	case *routepb.RouteMatch_Path:
		if ps.Path == "" {
			return out, false, fmt.Errorf("%s.path: must not be empty", mpath)
		}
		out.Match.Path = ps.Path
	case *routepb.RouteMatch_SafeRegex:
		re, err := compileRegex(ps.SafeRegex, mpath+".safe_regex")
		if err != nil {
			return out, false, err
		}
		out.Match.Regex = re
	case nil:
		return out, false, fmt.Errorf("%s: path_specifier: missing (want prefix, path or safe_regex)", mpath)
	default:
		return out, false, fmt.Errorf("%s: path_specifier: unsupported %s", mpath, oneofField(m, "path_specifier"))
	}
	out.Match.CaseSensitive = true
	if cs := m.GetCaseSensitive(); cs != nil {
		out.Match.CaseSensitive = cs.GetValue()
	}
	for i, h := range m.GetHeaders() {
		hm, err := headerMatcher(h, fmt.Sprintf("%s.headers[%d]", mpath, i))
		if err != nil {
			return out, false, err
		}
		out.Match.Headers = append(out.Match.Headers, hm)
	}
	if rf := m.GetRuntimeFraction(); rf != nil {
		v, err := fractionPerMillion(rf.GetDefaultValue(), mpath+".runtime_fraction.default_value")
		if err != nil {
			return out, false, err
		}
		out.Match.FractionPerMillion = &v
	}
	qps, err := queryParameterMatchers(m.GetQueryParameters(), mpath+".query_parameters")
	if err != nil {
		return out, false, err
	}
	out.Match.QueryParameters = qps

	switch a := r.GetAction().(type) {
	case *routepb.Route_Route:
		action, err := routeAction(a.Route, path+".route")
		if err != nil {
			return out, false, err
		}
		out.Action = action
		if out.Action.RetryPolicy, err = dc.retryPolicy(a.Route.GetRetryPolicy(), path+".route.retry_policy"); err != nil {
			return out, false, err
		}
		if out.Action.HashPolicies, err = dc.hashPolicies(a.Route.GetHashPolicy(), path+".route.hash_policy"); err != nil {
			return out, false, err
		}
	case *routepb.Route_NonForwardingAction:
		out.NonForwarding = true
	case nil:
		return out, false, fmt.Errorf("%s: action: missing", path)
	default:
		dc.ignore(path, fmt.Sprintf("route with unsupported action %s skipped", oneofField(r, "action")))
		return out, false, nil
	}
	overrides, err := dc.filterOverrides(r.GetTypedPerFilterConfig(), path+".typed_per_filter_config")
	if err != nil {
		return out, false, err
	}
	out.FilterOverrides = overrides
	if server && !out.NonForwarding {
		// gRFC A36: a server route that would forward fails RPCs; keep it so
		// the server can reject what it matches, rather than fall through.
		dc.log().Debug("xds: server route without non_forwarding_action", "route", path)
	}
	return out, true, nil
}

func routeAction(a *routepb.RouteAction, path string) (RouteAction, error) {
	var out RouteAction
	switch cs := a.GetClusterSpecifier().(type) {
	case *routepb.RouteAction_Cluster:
		if cs.Cluster == "" {
			return out, fmt.Errorf("%s.cluster: must not be empty", path)
		}
		out.Cluster = cs.Cluster
	case *routepb.RouteAction_WeightedClusters:
		wpath := path + ".weighted_clusters"
		clusters := cs.WeightedClusters.GetClusters()
		if len(clusters) == 0 {
			return out, fmt.Errorf("%s.clusters: missing", wpath)
		}
		var total uint64
		for i, c := range clusters {
			if c.GetName() == "" {
				return out, fmt.Errorf("%s.clusters[%d].name: missing", wpath, i)
			}
			w := c.GetWeight().GetValue()
			total += uint64(w)
			out.WeightedClusters = append(out.WeightedClusters, ClusterWeight{Name: c.GetName(), Weight: w})
		}
		if total == 0 {
			return out, fmt.Errorf("%s: total weight is 0", wpath)
		}
		if total > math.MaxUint32 {
			return out, fmt.Errorf("%s: total weight %d overflows uint32", wpath, total)
		}
	case *routepb.RouteAction_ClusterHeader:
		name, err := clusterHeaderName(cs.ClusterHeader, path+".cluster_header")
		if err != nil {
			return out, err
		}
		out.ClusterHeader = name
	case nil:
		return out, fmt.Errorf("%s: cluster_specifier: missing", path)
	case *routepb.RouteAction_ClusterSpecifierPlugin:
		return out, fmt.Errorf("%s.cluster_specifier_plugin: plugin %q: cluster specifier plugins are not implemented by mesh", path, cs.ClusterSpecifierPlugin)
	default:
		return out, fmt.Errorf("%s: cluster_specifier: unsupported %s", path, oneofField(a, "cluster_specifier"))
	}
	if msd := a.GetMaxStreamDuration(); msd != nil {
		d := msd.GetGrpcTimeoutHeaderMax()
		field := "grpc_timeout_header_max"
		if d == nil {
			d, field = msd.GetMaxStreamDuration(), "max_stream_duration"
		}
		t, err := nonNegativeDuration(d, path+".max_stream_duration."+field)
		if err != nil {
			return out, err
		}
		out.Timeout = t
	}
	return out, nil
}

func nonNegativeDuration(d *durationpb.Duration, path string) (time.Duration, error) {
	if d == nil {
		return 0, nil
	}
	if err := d.CheckValid(); err != nil {
		return 0, fmt.Errorf("%s: %w", path, err)
	}
	if d.AsDuration() < 0 {
		return 0, fmt.Errorf("%s: must not be negative", path)
	}
	return d.AsDuration(), nil
}

func headerMatcher(h *routepb.HeaderMatcher, path string) (HeaderMatcher, error) {
	out := HeaderMatcher{Name: h.GetName(), Invert: h.GetInvertMatch()}
	if h.GetName() == "" {
		return out, fmt.Errorf("%s.name: missing", path)
	}
	var sm *StringMatcher
	set := func(kind MatchKind, v, field string) error {
		if v == "" && kind != MatchExact {
			return fmt.Errorf("%s.%s: must not be empty", path, field)
		}
		sm = &StringMatcher{Kind: kind, Value: v}
		return nil
	}
	var err error
	switch s := h.GetHeaderMatchSpecifier().(type) {
	case *routepb.HeaderMatcher_ExactMatch:
		err = set(MatchExact, s.ExactMatch, "exact_match")
	case *routepb.HeaderMatcher_PrefixMatch:
		err = set(MatchPrefix, s.PrefixMatch, "prefix_match")
	case *routepb.HeaderMatcher_SuffixMatch:
		err = set(MatchSuffix, s.SuffixMatch, "suffix_match")
	case *routepb.HeaderMatcher_ContainsMatch:
		err = set(MatchContains, s.ContainsMatch, "contains_match")
	case *routepb.HeaderMatcher_SafeRegexMatch:
		re, rerr := compileRegex(s.SafeRegexMatch, path+".safe_regex_match")
		if rerr != nil {
			return out, rerr
		}
		sm = &StringMatcher{Kind: MatchRegex, Value: s.SafeRegexMatch.GetRegex(), Regex: re}
	case *routepb.HeaderMatcher_StringMatch:
		v, serr := stringMatcher(s.StringMatch, path+".string_match")
		if serr != nil {
			return out, serr
		}
		sm = &v
	case *routepb.HeaderMatcher_PresentMatch:
		present := s.PresentMatch
		out.Present = &present
	case *routepb.HeaderMatcher_RangeMatch:
		if s.RangeMatch.GetStart() >= s.RangeMatch.GetEnd() {
			return out, fmt.Errorf("%s.range_match: start %d must be below end %d", path, s.RangeMatch.GetStart(), s.RangeMatch.GetEnd())
		}
		out.Range = &Int64Range{Start: s.RangeMatch.GetStart(), End: s.RangeMatch.GetEnd()}
	case nil:
		// Envoy treats a matcher with no specifier as a presence check.
		present := true
		out.Present = &present
	default:
		return out, fmt.Errorf("%s: unsupported header_match_specifier %s", path, oneofField(h, "header_match_specifier"))
	}
	if err != nil {
		return out, err
	}
	out.Match = sm
	return out, nil
}
