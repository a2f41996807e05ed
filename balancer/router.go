package balancer

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"google.golang.org/grpc/metadata"

	"mesh/xdsclient"
)

// ErrNoRoute is wrapped by the error Router.Pick returns when no route of the
// virtual host matches a request.
var ErrNoRoute = errors.New("no route matched")

// ErrUnroutableCluster is wrapped by the error Router.Pick returns when a
// cluster_header route matches a request whose header is missing or names
// a cluster the router cannot reach: one no route of the virtual host
// names. gRPC RPCs fail with UNAVAILABLE and
// HTTP requests with an *UnavailableError (503).
var ErrUnroutableCluster = errors.New("cluster header names no routable cluster")

// ErrNoVirtualHost is wrapped by the error NewRouter returns when no virtual
// host of the route config serves the authority.
var ErrNoVirtualHost = errors.New("no virtual host matches authority")

// Headers gives a route's header matchers access to a request's headers
// without copying them. Name is always lowercase. Implementations must not
// allocate for the common case of a header that is present once.
type Headers interface {
	Values(name string) []string
}

// MetadataHeaders adapts gRPC metadata (whose keys are lowercase) to Headers.
// The conversion MetadataHeaders(md) does not allocate.
type MetadataHeaders metadata.MD

// Values returns the values of the lowercase header name. gRPC never puts
// content-type in metadata but always sends "application/grpc", so that is
// what a matcher on content-type sees (gRFC A28).
func (h MetadataHeaders) Values(name string) []string {
	if name == "content-type" {
		return grpcContentType
	}
	return h[name]
}

var grpcContentType = []string{"application/grpc"}

// HTTPHeaders adapts net/http headers to Headers. Lookups canonicalize the
// name, which allocates only when a route has header matchers.
type HTTPHeaders http.Header

// Values returns the values of header name.
func (h HTTPHeaders) Values(name string) []string { return http.Header(h).Values(name) }

// Router matches requests against the routes of one virtual host and picks
// the cluster each goes to. It is immutable and safe for concurrent use; its
// Pick does not lock and, for routes without header matchers or with headers
// present once, does not allocate.
type Router struct {
	routeConfig string
	virtualHost *xdsclient.VirtualHost
	routes      []compiledRoute
	// clusters lists every cluster any route names, weight-0 legs included,
	// in first-seen order; legs refer to it by index.
	clusters []string
	// clusterIndex maps a cluster name to its index in clusters, for
	// cluster_header routes.
	clusterIndex map[string]int
	// headerRouted is set when some route takes its cluster from a
	// request header: then every cluster may carry traffic.
	headerRouted bool
	needsHeaders bool
	needsQuery   bool
	// faults are the listener's fault filters (gRFC A33), set before the
	// router is published; faultHeaders is set when one of them (or a
	// route's override) reads request headers.
	faults       []faultFilter
	faultHeaders bool
}

type compiledRoute struct {
	route *xdsclient.Route
	legs  []weightedLeg
	total uint64
	// clusterHeader is the route's cluster_header (lowercase) and
	// canonicalHeader its net/http form, looked up without allocating.
	clusterHeader   string
	canonicalHeader string
	// where names the route in errors.
	where string
}

// weightedLeg is one cluster of a route with the running sum of weights up
// to and including it; a weight-0 leg has the same sum as the leg before it
// and so is never chosen.
type weightedLeg struct {
	cluster    int
	cumulative uint64
}

// NewRouter builds the router for the virtual host of rc that serves
// authority (Envoy domain matching, gRFC A27/A28). A cluster_header route
// can reach only the clusters other routes of the virtual host name.
func NewRouter(rc *xdsclient.RouteConfig, authority string) (*Router, error) {
	if rc == nil {
		return nil, errors.New("route config is nil")
	}
	vh := selectVirtualHost(rc.VirtualHosts, authority)
	if vh == nil {
		return nil, fmt.Errorf("route config %q: %w %q", rc.Name, ErrNoVirtualHost, authority)
	}
	r := &Router{routeConfig: rc.Name, virtualHost: vh, routes: make([]compiledRoute, 0, len(vh.Routes)), clusterIndex: map[string]int{}}
	index := r.clusterIndex
	for i := range vh.Routes {
		route := &vh.Routes[i]
		if route.NonForwarding {
			// Server-side routes accept rather than forward; a client skips them.
			continue
		}
		where := fmt.Sprintf("route config %q virtual host %q routes[%d]", rc.Name, vh.Name, i)
		cr := compiledRoute{route: route, where: routeName(rc.Name, vh.Name, route.Name, i)}
		add := func(name string, weight uint32) error {
			if name == "" {
				return fmt.Errorf("%s: action: empty cluster name", where)
			}
			idx, ok := index[name]
			if !ok {
				idx = len(r.clusters)
				index[name] = idx
				r.clusters = append(r.clusters, name)
			}
			cr.total += uint64(weight)
			cr.legs = append(cr.legs, weightedLeg{cluster: idx, cumulative: cr.total})
			return nil
		}
		switch {
		case route.Action.Cluster != "":
			if err := add(route.Action.Cluster, 1); err != nil {
				return nil, err
			}
		case len(route.Action.WeightedClusters) > 0:
			for j, w := range route.Action.WeightedClusters {
				if err := add(w.Name, w.Weight); err != nil {
					return nil, fmt.Errorf("%w (weighted_clusters[%d])", err, j)
				}
			}
			if cr.total == 0 {
				return nil, fmt.Errorf("%s: action.weighted_clusters: all weights are 0", where)
			}
		case route.Action.ClusterHeader != "":
			// The cluster is the header's value, looked up among the
			// clusters the other routes name (see clusterByHeader).
			cr.clusterHeader = strings.ToLower(route.Action.ClusterHeader)
			cr.canonicalHeader = http.CanonicalHeaderKey(cr.clusterHeader)
			r.headerRouted = true
			r.needsHeaders = true
		default:
			return nil, fmt.Errorf("%s: action: no cluster", where)
		}
		if len(route.Match.Headers) > 0 {
			r.needsHeaders = true
		}
		if len(route.Match.QueryParameters) > 0 {
			r.needsQuery = true
		}
		for _, hp := range route.Action.HashPolicies {
			switch hp.Kind {
			case xdsclient.HashHeader:
				r.needsHeaders = true
			case xdsclient.HashQueryParameter:
				r.needsQuery = true
			}
		}
		r.routes = append(r.routes, cr)
	}
	return r, nil
}

// carriesTraffic reports whether some route gives cluster index i a
// weight above 0.
func (r *Router) carriesTraffic(i int) bool {
	if r.headerRouted {
		return true
	}
	for _, cr := range r.routes {
		var prev uint64
		for _, leg := range cr.legs {
			if leg.cluster == i && leg.cumulative > prev {
				return true
			}
			prev = leg.cumulative
		}
	}
	return false
}

// Pick returns the cluster a request for path goes to and the route that
// matched. headers may be nil for routes that read none. Errors wrap
// ErrNoRoute, or ErrUnroutableCluster for a cluster_header route.
func (r *Router) Pick(path string, headers Headers) (cluster string, route *xdsclient.Route, err error) {
	idx, route, err := r.pick(path, headers)
	if err != nil {
		return "", nil, err
	}
	return r.clusters[idx], route, nil
}

func (r *Router) pickRequest(req *http.Request) (int, *xdsclient.Route, error) {
	var query url.Values
	if r.needsQuery && req.URL.RawQuery != "" {
		query = req.URL.Query()
	}
	return r.pickQuery(req.URL.Path, HTTPHeaders(req.Header), query)
}

// pick returns the index in r.clusters of the chosen cluster.
func (r *Router) pick(path string, headers Headers) (int, *xdsclient.Route, error) {
	return r.pickQuery(path, headers, nil)
}

// pickQuery is pick with query parameters; nil query (every gRPC request)
// matches no route that has query parameter matchers.
func (r *Router) pickQuery(path string, headers Headers, query url.Values) (int, *xdsclient.Route, error) {
	for i := range r.routes {
		cr := &r.routes[i]
		if !matchRoute(&cr.route.Match, path, headers, query) {
			continue
		}
		if cr.clusterHeader != "" {
			return r.clusterByHeader(cr, headers)
		}
		if len(cr.legs) == 1 {
			return cr.legs[0].cluster, cr.route, nil
		}
		n := rand.Uint64N(cr.total)
		for _, leg := range cr.legs {
			if n < leg.cumulative {
				return leg.cluster, cr.route, nil
			}
		}
		// Unreachable: n < total == the last leg's cumulative weight.
		return cr.legs[len(cr.legs)-1].cluster, cr.route, nil
	}
	return 0, nil, fmt.Errorf("%w %s in route config %q", ErrNoRoute, path, r.routeConfig)
}

// clusterByHeader picks the cluster a cluster_header route's header names
// (its first value, as Envoy reads it). Only clusters that some route of
// the config names are known to the router, and so routable: the resolver
// cannot watch clusters it has never heard of before a request names one.
func (r *Router) clusterByHeader(cr *compiledRoute, headers Headers) (int, *xdsclient.Route, error) {
	var values []string
	switch h := headers.(type) {
	case nil:
	case HTTPHeaders:
		// Direct map access with the precomputed canonical key: Values
		// would canonicalize, and allocate, on every request.
		values = h[cr.canonicalHeader]
	default:
		values = h.Values(cr.clusterHeader)
	}
	if len(values) == 0 || values[0] == "" {
		return 0, nil, fmt.Errorf("%s: cluster_header %q: header missing from the request: %w", cr.where, cr.clusterHeader, ErrUnroutableCluster)
	}
	idx, ok := r.clusterIndex[values[0]]
	if !ok {
		return 0, nil, fmt.Errorf("%s: cluster_header %q names cluster %q, which no route of its virtual host names: %w",
			cr.where, cr.clusterHeader, values[0], ErrUnroutableCluster)
	}
	return idx, cr.route, nil
}

// routeName names route i of a virtual host for errors.
func routeName(routeConfig, virtualHost, route string, i int) string {
	if route != "" {
		return fmt.Sprintf("route config %q virtual host %q route %q", routeConfig, virtualHost, route)
	}
	return fmt.Sprintf("route config %q virtual host %q routes[%d]", routeConfig, virtualHost, i)
}

func matchRoute(m *xdsclient.RouteMatch, path string, headers Headers, query url.Values) bool {
	switch {
	case m.Regex != nil:
		// case_sensitive does not apply to regexes (gRFC A28); use (?i).
		if !m.Regex.MatchString(path) {
			return false
		}
	case m.Path != "":
		if m.CaseSensitive {
			if path != m.Path {
				return false
			}
		} else if !strings.EqualFold(path, m.Path) {
			return false
		}
	default:
		if m.CaseSensitive {
			if !strings.HasPrefix(path, m.Prefix) {
				return false
			}
		} else if len(path) < len(m.Prefix) || !strings.EqualFold(path[:len(m.Prefix)], m.Prefix) {
			return false
		}
	}
	for i := range m.Headers {
		if !matchHeader(&m.Headers[i], headers) {
			return false
		}
	}
	for i := range m.QueryParameters {
		if !matchQueryParameter(&m.QueryParameters[i], query) {
			return false
		}
	}
	if m.FractionPerMillion != nil && rand.Uint32N(1_000_000) >= *m.FractionPerMillion {
		return false
	}
	return true
}

// matchQueryParameter follows Envoy: the first value of the parameter is
// matched; an absent parameter matches nothing.
func matchQueryParameter(qm *xdsclient.QueryParameterMatcher, query url.Values) bool {
	values, ok := query[qm.Name]
	if !ok {
		return false
	}
	if qm.Match == nil {
		return qm.Present
	}
	return len(values) > 0 && qm.Match.Match(values[0])
}

// matchHeader follows gRPC's proxyless semantics (gRFC A28): binary headers
// are invisible, a header present more than once is its values joined with
// ",", and an absent header fails every matcher but "present: false".
func matchHeader(hm *xdsclient.HeaderMatcher, headers Headers) bool {
	var values []string
	if headers != nil && !strings.HasSuffix(hm.Name, "-bin") {
		values = headers.Values(hm.Name)
	}
	present := len(values) > 0
	if hm.Match == nil && hm.Present != nil && hm.Range == nil {
		return (present == *hm.Present) != hm.Invert
	}
	if !present {
		return false
	}
	value := values[0]
	if len(values) > 1 {
		value = strings.Join(values, ",")
	}
	var ok bool
	switch {
	case hm.Match != nil:
		ok = hm.Match.Match(value)
	case hm.Present != nil:
		ok = *hm.Present
	case hm.Range != nil:
		n, err := strconv.ParseInt(value, 10, 64)
		ok = err == nil && n >= hm.Range.Start && n < hm.Range.End
	default:
		ok = true
	}
	return ok != hm.Invert
}

// selectVirtualHost returns the virtual host whose domains best match
// authority, in Envoy's order: an exact domain, then the longest suffix
// wildcard ("*.example.com", "*-svc"), then the longest prefix wildcard
// ("example.*"), then "*". Matching ignores case. It returns nil if none
// matches.
func selectVirtualHost(hosts []xdsclient.VirtualHost, authority string) *xdsclient.VirtualHost {
	const (
		noMatch = iota
		universal
		prefixWildcard
		suffixWildcard
		exact
	)
	var best *xdsclient.VirtualHost
	bestKind, bestLen := noMatch, -1
	for i := range hosts {
		for _, domain := range hosts[i].Domains {
			kind, length := noMatch, len(domain)
			switch {
			case domain == "*":
				kind = universal
			case strings.HasPrefix(domain, "*"):
				suffix := domain[1:]
				if len(authority) > len(suffix) && strings.EqualFold(authority[len(authority)-len(suffix):], suffix) {
					kind = suffixWildcard
				}
			case strings.HasSuffix(domain, "*"):
				prefix := domain[:len(domain)-1]
				if len(authority) > len(prefix) && strings.EqualFold(authority[:len(prefix)], prefix) {
					kind = prefixWildcard
				}
			case strings.EqualFold(domain, authority):
				kind = exact
			}
			if kind == noMatch {
				continue
			}
			if kind > bestKind || (kind == bestKind && length > bestLen) {
				best, bestKind, bestLen = &hosts[i], kind, length
			}
		}
	}
	return best
}
