package xdsclient

import (
	"net/netip"
	"regexp"
	"strings"
	"time"
)

// The resource types mesh consumes. Each is decoded from its Envoy proto,
// validated, and then never mutated: watchers may keep and share them freely.

// Listener is an LDS resource. A client listener (gRFC A27; istiod names it
// "host:port") carries HTTP; a server listener (gRFC A36; istiod names it
// "xds.istio.io/grpc/lds/inbound/ip:port") carries Address and FilterChains.
type Listener struct {
	Name string
	// HTTP is the API listener's HttpConnectionManager; nil for server listeners.
	HTTP *HTTPConnectionManager
	// Address is the server listener's "ip:port"; empty for client listeners.
	Address            string
	FilterChains       []FilterChain
	DefaultFilterChain *FilterChain
}

// IsServer reports whether l is a server-side (inbound) listener.
func (l *Listener) IsServer() bool { return l.HTTP == nil }

// HTTPConnectionManager is the part of Envoy's HttpConnectionManager that a
// proxyless client or server uses. Exactly one of RouteConfigName (RDS) and
// RouteConfig (inline) is set.
type HTTPConnectionManager struct {
	RouteConfigName   string
	RouteConfig       *RouteConfig
	MaxStreamDuration time.Duration
	HTTPFilters       []HTTPFilter
	// PathNormalization is how a server rewrites request paths before its
	// filters and handlers see them.
	PathNormalization PathNormalization
}

// PathNormalization is the part of Envoy's HttpConnectionManager that
// rewrites a request's path before any filter sees it (the fields
// normalize_path, merge_slashes and path_with_escaped_slashes_action).
type PathNormalization struct {
	// NormalizePath is normalize_path (RFC 3986 normalization); nil when
	// the resource leaves it unset.
	NormalizePath *bool
	// MergeSlashes is merge_slashes: "//" becomes "/".
	MergeSlashes bool
	// EscapedSlashes is path_with_escaped_slashes_action: what to do with
	// %2F and %5C in the path.
	EscapedSlashes EscapedSlashesAction
}

// EscapedSlashesAction is HttpConnectionManager.PathWithEscapedSlashesAction.
type EscapedSlashesAction int

// Escaped slash actions, as Envoy numbers them.
const (
	EscapedSlashesDefault             EscapedSlashesAction = iota // IMPLEMENTATION_SPECIFIC_DEFAULT: kept
	EscapedSlashesKeep                                            // KEEP_UNCHANGED
	EscapedSlashesReject                                          // REJECT_REQUEST: 400
	EscapedSlashesUnescapeAndRedirect                             // UNESCAPE_AND_REDIRECT
	EscapedSlashesUnescapeAndForward                              // UNESCAPE_AND_FORWARD
)

// HTTPFilter names one HTTP filter in chain order; Config is the decoded
// filter config for filters mesh implements, nil for the router.
type HTTPFilter struct {
	Name    string
	TypeURL string
	Config  any
}

// FilterChain is one filter chain of a server listener.
type FilterChain struct {
	Name  string
	Match FilterChainMatch
	// TLS is nil for a plaintext chain.
	TLS  *DownstreamTLS
	HTTP *HTTPConnectionManager
}

// FilterChainMatch is the subset of Envoy's FilterChainMatch that gRFC A36
// honours. Zero values match everything.
type FilterChainMatch struct {
	DestinationPort      uint32
	PrefixRanges         []netip.Prefix
	SourceType           SourceType
	SourcePrefixRanges   []netip.Prefix
	SourcePorts          []uint32
	TransportProtocol    string // "", "raw_buffer" or "tls"
	ApplicationProtocols []string
}

// SourceType is FilterChainMatch.ConnectionSourceType.
type SourceType int

// Source types, as in Envoy.
const (
	SourceAny SourceType = iota
	SourceSameIPOrLoopback
	SourceExternal
)

// CertificateRef names a certificate from a bootstrap certificate provider
// instance (gRFC A29), e.g. {Provider: "default", Certificate: "ROOTCA"},
// or, when SDS is set, an SDS secret fetched on the ADS stream: then
// Certificate is the secret's name and Provider is SDSProviderName of it.
type CertificateRef struct {
	Provider    string
	Certificate string
	SDS         bool
}

// DownstreamTLS is a server filter chain's TLS settings.
type DownstreamTLS struct {
	// Identity is the server's own certificate.
	Identity CertificateRef
	// Roots validates client certificates; nil means clients are not verified.
	Roots                    *CertificateRef
	RequireClientCertificate bool
}

// UpstreamTLS is a cluster's TLS settings (from UpstreamTlsContext).
type UpstreamTLS struct {
	// Identity is the client certificate to present; nil for plain TLS.
	Identity *CertificateRef
	// Roots validates the server certificate.
	Roots CertificateRef
	// SubjectAltNames, when non-empty, must match at least one SAN of the
	// server certificate (URI SANs carry SPIFFE IDs).
	SubjectAltNames []StringMatcher
	SNI             string
}

// RouteConfig is an RDS resource (or an inline route_config).
type RouteConfig struct {
	Name         string
	VirtualHosts []VirtualHost
}

// VirtualHost groups routes by the authority they serve.
type VirtualHost struct {
	Name    string
	Domains []string
	Routes  []Route
}

// Route is one route: a match and what to do with what it matches.
type Route struct {
	Name   string
	Match  RouteMatch
	Action RouteAction
	// NonForwarding is set for server-side routes (gRFC A36), which accept
	// instead of forwarding.
	NonForwarding bool
	// FilterOverrides are the route's typed_per_filter_config (merged over
	// its virtual host's) for the filters mesh implements, keyed by HTTP
	// filter name; a *FaultInjection replaces that fault filter's config
	// for this route (gRFC A33, A39).
	FilterOverrides map[string]any
}

// RouteMatch selects requests (gRFC A28). Exactly one of Prefix, Path and
// Regex is set; an empty Prefix matches everything.
type RouteMatch struct {
	Prefix        string
	Path          string
	Regex         *regexp.Regexp
	CaseSensitive bool
	Headers       []HeaderMatcher
	// FractionPerMillion, when non-nil, matches that share of requests.
	FractionPerMillion *uint32
	// QueryParameters match HTTP query parameters; gRPC requests have none,
	// so a route with any never matches a gRPC request (gRFC A28).
	QueryParameters []QueryParameterMatcher
}

// HeaderMatcher matches one request header (gRPC metadata).
type HeaderMatcher struct {
	Name string
	// Exactly one of Match, Present and Range is used, in that order.
	Match   *StringMatcher
	Present *bool
	Range   *Int64Range
	Invert  bool
}

// Int64Range is a half-open range [Start, End).
type Int64Range struct{ Start, End int64 }

// RouteAction says where matched requests go: to Cluster, split over
// WeightedClusters, or to the cluster a request header names
// (ClusterHeader). Exactly one of the three is set.
type RouteAction struct {
	Cluster          string
	WeightedClusters []ClusterWeight
	// ClusterHeader is Envoy's cluster_header, lowercased: the request
	// header whose (first) value is the name of the cluster to use. gRPC
	// ignores it (gRFC A28); mesh follows Envoy. Clusters cannot be known
	// in advance, so a router only reaches clusters that other routes of
	// the same virtual host name.
	ClusterHeader string
	// Timeout is the route's max_stream_duration (gRFC A31); 0 means none.
	Timeout time.Duration
	// RetryPolicy is the route's (or else its virtual host's) retry policy
	// (gRFC A44); nil means no retries.
	RetryPolicy *RetryPolicy
	// HashPolicies compute the request hash ring_hash clusters use (gRFC A42).
	HashPolicies []HashPolicy
}

// ClusterWeight is one leg of a weighted split. Weight 0 gets no traffic.
type ClusterWeight struct {
	Name   string
	Weight uint32
}

// Clusters returns the names of every cluster the action can send to,
// including weight-0 legs (they stay connected so a flip never fails). It
// is empty for a ClusterHeader action.
func (a *RouteAction) Clusters() []string {
	if a.Cluster != "" {
		return []string{a.Cluster}
	}
	out := make([]string, 0, len(a.WeightedClusters))
	for _, w := range a.WeightedClusters {
		out = append(out, w.Name)
	}
	return out
}

// ClusterType is the discovery type of a cluster.
type ClusterType int

// Cluster discovery types mesh implements.
const (
	ClusterEDS ClusterType = iota
	ClusterLogicalDNS
)

// LBPolicy is a cluster's load-balancing policy.
type LBPolicy string

// LB policies.
const (
	LBRoundRobin   LBPolicy = "round_robin"
	LBLeastRequest LBPolicy = "least_request"
	LBRingHash     LBPolicy = "ring_hash"
)

// Cluster is a CDS resource.
type Cluster struct {
	Name string
	Type ClusterType
	// EDSServiceName is the EDS resource to watch; it defaults to Name.
	EDSServiceName string
	// DNSAddress is the "host:port" of a LOGICAL_DNS cluster.
	DNSAddress string
	LBPolicy   LBPolicy
	// TLS is nil for plaintext clusters.
	TLS *UpstreamTLS
	// MaxRequests is the circuit breaker's concurrent request limit (gRFC A32).
	MaxRequests uint32
	// OutlierDetection is nil when the cluster has none (gRFC A50).
	OutlierDetection *OutlierDetection
	// MinRingSize and MaxRingSize bound a ring_hash cluster's ring (gRFC
	// A42); zero for other policies.
	MinRingSize, MaxRingSize uint64
	// ChoiceCount is how many endpoints least_request samples per pick
	// (gRFC A48), 2 to 10; zero for other policies.
	ChoiceCount uint32
}

// Defaults of the LB policies' configs (gRFC A42 for xDS, A48).
const (
	DefaultMinRingSize = 1024
	DefaultMaxRingSize = 8 << 20
	DefaultChoiceCount = 2
)

// EndpointsName returns the EDS resource name to watch for c.
func (c *Cluster) EndpointsName() string {
	if c.EDSServiceName != "" {
		return c.EDSServiceName
	}
	return c.Name
}

// Endpoints is an EDS resource (a ClusterLoadAssignment).
type Endpoints struct {
	Name       string
	Localities []LocalityEndpoints
	// DropPerMillion maps drop categories to their rate.
	DropPerMillion map[string]uint32
}

// LocalityEndpoints is one locality's endpoints.
type LocalityEndpoints struct {
	Locality  Locality
	Weight    uint32
	Priority  uint32
	Endpoints []Endpoint
}

// Locality identifies where endpoints (or this node) run.
type Locality struct {
	Region  string `json:"region,omitempty"`
	Zone    string `json:"zone,omitempty"`
	SubZone string `json:"sub_zone,omitempty"`
}

// HealthStatus is an endpoint's health as reported by the control plane.
type HealthStatus int

// Health statuses (Envoy's core.HealthStatus). Only Unknown and Healthy
// endpoints receive traffic (gRFC A27).
const (
	HealthUnknown HealthStatus = iota
	HealthHealthy
	HealthUnhealthy
	HealthDraining
	HealthTimeout
	HealthDegraded
)

// Usable reports whether an endpoint in this state may receive traffic.
func (h HealthStatus) Usable() bool { return h == HealthUnknown || h == HealthHealthy }

// Endpoint is one backend address.
type Endpoint struct {
	Address string // "ip:port"
	Health  HealthStatus
	Weight  uint32
}

// MatchKind is what a StringMatcher compares.
type MatchKind int

// String matcher kinds (Envoy's type.matcher.v3.StringMatcher).
const (
	MatchExact MatchKind = iota
	MatchPrefix
	MatchSuffix
	MatchContains
	MatchRegex
)

// StringMatcher is Envoy's StringMatcher, validated.
type StringMatcher struct {
	Kind       MatchKind
	Value      string
	Regex      *regexp.Regexp // for MatchRegex; anchored to the whole input
	IgnoreCase bool
}

// Match reports whether s satisfies m. It does not allocate unless
// IgnoreCase is set with a regex.
func (m *StringMatcher) Match(s string) bool {
	switch m.Kind {
	case MatchExact:
		if m.IgnoreCase {
			return strings.EqualFold(s, m.Value)
		}
		return s == m.Value
	case MatchPrefix:
		if m.IgnoreCase {
			return len(s) >= len(m.Value) && strings.EqualFold(s[:len(m.Value)], m.Value)
		}
		return strings.HasPrefix(s, m.Value)
	case MatchSuffix:
		if m.IgnoreCase {
			return len(s) >= len(m.Value) && strings.EqualFold(s[len(s)-len(m.Value):], m.Value)
		}
		return strings.HasSuffix(s, m.Value)
	case MatchContains:
		if m.IgnoreCase {
			return containsFold(s, m.Value)
		}
		return strings.Contains(s, m.Value)
	case MatchRegex:
		return m.Regex != nil && m.Regex.MatchString(s)
	}
	return false
}

func containsFold(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if strings.EqualFold(s[i:i+len(sub)], sub) {
			return true
		}
	}
	return false
}
