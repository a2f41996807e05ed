package admin

import "time"

// The views below are what /debug/config shows of each decoded resource:
// mesh's own types flattened to JSON, durations as Go strings. Secrets
// show certificates' metadata only, never a key.

// ListenerConfig is a listener in force.
type ListenerConfig struct {
	Address      string   `json:"address,omitempty"`
	RouteConfig  string   `json:"route_config,omitempty"`
	HTTPFilters  []string `json:"http_filters,omitempty"`
	FilterChains []string `json:"filter_chains,omitempty"`
}

// RouteConfigView is a route configuration in force.
type RouteConfigView struct {
	VirtualHosts []VirtualHostView `json:"virtual_hosts"`
}

// VirtualHostView is one virtual host and its routes, in match order.
type VirtualHostView struct {
	Name    string      `json:"name"`
	Domains []string    `json:"domains"`
	Routes  []RouteView `json:"routes"`
}

// RouteView is one route: its matcher and what it does.
type RouteView struct {
	Name          string       `json:"name,omitempty"`
	Match         string       `json:"match"`
	Cluster       string       `json:"cluster,omitempty"`
	Weighted      []WeightView `json:"weighted_clusters,omitempty"`
	Timeout       string       `json:"timeout,omitempty"`
	Retries       *RetryView   `json:"retries,omitempty"`
	Faults        []FaultView  `json:"faults,omitempty"`
	NonForwarding bool         `json:"non_forwarding,omitempty"`
}

// WeightView is one leg of a weighted split.
type WeightView struct {
	Cluster string `json:"cluster"`
	Weight  uint32 `json:"weight"`
}

// RetryView is a route's retry policy.
type RetryView struct {
	Attempts      uint32   `json:"num_retries"`
	On            []string `json:"retry_on"`
	PerTryTimeout string   `json:"per_try_timeout,omitempty"`
	BackoffBase   string   `json:"backoff_base,omitempty"`
	BackoffMax    string   `json:"backoff_max,omitempty"`
}

// FaultView is a fault injected on a route, by filter name.
type FaultView struct {
	Filter          string `json:"filter"`
	Delay           string `json:"delay,omitempty"`
	DelayPercent    string `json:"delay_percent,omitempty"`
	Abort           string `json:"abort,omitempty"`
	AbortPercent    string `json:"abort_percent,omitempty"`
	MaxActiveFaults uint32 `json:"max_active_faults,omitempty"`
}

// ClusterConfig is a cluster in force.
type ClusterConfig struct {
	Type             string           `json:"type"`
	EDSServiceName   string           `json:"eds_service_name,omitempty"`
	LBPolicy         string           `json:"lb_policy"`
	MaxRequests      uint32           `json:"max_requests,omitempty"`
	OutlierDetection *OutlierView     `json:"outlier_detection,omitempty"`
	TLS              *UpstreamTLSView `json:"tls,omitempty"`
}

// OutlierView is a cluster's outlier detection.
type OutlierView struct {
	Interval           string `json:"interval"`
	BaseEjectionTime   string `json:"base_ejection_time"`
	MaxEjectionPercent uint32 `json:"max_ejection_percent"`
	Consecutive5xx     uint32 `json:"consecutive_5xx,omitempty"`
	SuccessRate        bool   `json:"success_rate,omitempty"`
	FailurePercentage  uint32 `json:"failure_percentage_threshold,omitempty"`
}

// UpstreamTLSView is a cluster's TLS: where its certificates come from
// and which server identities it accepts.
type UpstreamTLSView struct {
	Identity        string   `json:"identity,omitempty"`
	Roots           string   `json:"roots"`
	SubjectAltNames []string `json:"subject_alt_names,omitempty"`
	SNI             string   `json:"sni,omitempty"`
}

// EndpointsConfig is a load assignment in force.
type EndpointsConfig struct {
	Endpoints []string `json:"endpoints"`
}

// SecretConfig is an SDS secret in force: its certificates' metadata.
type SecretConfig struct {
	Certificate  *CertificateView `json:"certificate,omitempty"`
	TrustDomains []string         `json:"trust_domains,omitempty"`
}

// CertificateView describes a workload certificate without its key.
type CertificateView struct {
	// Provider names the certificate provider instance (or SDS secret).
	Provider  string    `json:"provider,omitempty"`
	SPIFFEID  string    `json:"spiffe_id"`
	Serial    string    `json:"serial"`
	NotBefore time.Time `json:"not_before"`
	NotAfter  time.Time `json:"not_after"`
	// ChainLength counts the certificates presented, leaf first.
	ChainLength int `json:"chain_length"`
	// TrustBundle lists the roots that validate peers of the SVID's
	// trust domain.
	TrustDomain string     `json:"trust_domain,omitempty"`
	TrustBundle []RootView `json:"trust_bundle,omitempty"`
}

// RootView is one trust anchor.
type RootView struct {
	Subject  string    `json:"subject"`
	Serial   string    `json:"serial"`
	NotAfter time.Time `json:"not_after"`
	SHA256   string    `json:"sha256"`
}
