package admin

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"mesh/xdsclient"
)

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

// configOf flattens a decoded resource to its view; nil for none.
func configOf(v any) any {
	switch r := v.(type) {
	case *xdsclient.Listener:
		return listenerConfig(r)
	case *xdsclient.RouteConfig:
		return routeConfig(r)
	case *xdsclient.Cluster:
		return clusterConfig(r)
	case *xdsclient.Endpoints:
		return endpointsConfig(r)
	case *xdsclient.Secret:
		return secretConfig(r)
	}
	return nil
}

func listenerConfig(l *xdsclient.Listener) ListenerConfig {
	v := ListenerConfig{Address: l.Address}
	if h := l.HTTP; h != nil {
		v.RouteConfig = h.RouteConfigName
		for _, f := range h.HTTPFilters {
			v.HTTPFilters = append(v.HTTPFilters, f.Name)
		}
	}
	for _, fc := range l.FilterChains {
		desc := fc.Name
		if fc.TLS != nil {
			desc += " (tls"
			if fc.TLS.RequireClientCertificate {
				desc += ", client certificate required"
			}
			desc += ")"
		}
		v.FilterChains = append(v.FilterChains, desc)
	}
	return v
}

func routeConfig(rc *xdsclient.RouteConfig) RouteConfigView {
	out := RouteConfigView{VirtualHosts: []VirtualHostView{}}
	for _, vh := range rc.VirtualHosts {
		vv := VirtualHostView{Name: vh.Name, Domains: vh.Domains, Routes: []RouteView{}}
		for _, r := range vh.Routes {
			vv.Routes = append(vv.Routes, routeView(r))
		}
		out.VirtualHosts = append(out.VirtualHosts, vv)
	}
	return out
}

func routeView(r xdsclient.Route) RouteView {
	a := r.Action
	v := RouteView{Name: r.Name, Match: matchString(r.Match), Cluster: a.Cluster, NonForwarding: r.NonForwarding}
	if a.ClusterHeader != "" {
		v.Cluster = "header:" + a.ClusterHeader
	}
	for _, w := range a.WeightedClusters {
		v.Weighted = append(v.Weighted, WeightView{Cluster: w.Name, Weight: w.Weight})
	}
	if a.Timeout > 0 {
		v.Timeout = a.Timeout.String()
	}
	if p := a.RetryPolicy; p != nil {
		rv := &RetryView{Attempts: p.NumRetries, On: []string{}, PerTryTimeout: dur(p.PerTryTimeout),
			BackoffBase: dur(p.BackoffBase), BackoffMax: dur(p.BackoffMax)}
		for _, c := range p.GRPCCodes {
			rv.On = append(rv.On, c.String())
		}
		for _, h := range []struct {
			on   bool
			name string
		}{{p.HTTP5xx, "5xx"}, {p.HTTPGatewayError, "gateway-error"}, {p.HTTPReset, "reset"},
			{p.HTTPConnectFailure, "connect-failure"}, {p.RefusedStream, "refused-stream"}} {
			if h.on {
				rv.On = append(rv.On, h.name)
			}
		}
		for _, s := range p.HTTPStatusCodes {
			rv.On = append(rv.On, fmt.Sprint(s))
		}
		v.Retries = rv
	}
	names := make([]string, 0, len(r.FilterOverrides))
	for name := range r.FilterOverrides {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		if f, ok := r.FilterOverrides[name].(*xdsclient.FaultInjection); ok && f != nil {
			v.Faults = append(v.Faults, faultView(name, f))
		}
	}
	return v
}

func faultView(name string, f *xdsclient.FaultInjection) FaultView {
	v := FaultView{Filter: name, MaxActiveFaults: f.MaxActiveFaults}
	if d := f.Delay; d != nil {
		v.Delay, v.DelayPercent = d.Fixed.String(), percent(d.PerMillion)
		if d.FromHeader {
			v.Delay = "from header"
		}
	}
	if a := f.Abort; a != nil {
		switch {
		case a.FromHeader:
			v.Abort = "from header"
		case a.GRPCStatus != nil:
			v.Abort = fmt.Sprintf("grpc %d", *a.GRPCStatus)
		default:
			v.Abort = fmt.Sprintf("http %d", a.HTTPStatus)
		}
		v.AbortPercent = percent(a.PerMillion)
	}
	return v
}

func percent(perMillion uint32) string {
	return fmt.Sprintf("%g%%", float64(perMillion)/1e4)
}

func dur(d time.Duration) string {
	if d <= 0 {
		return ""
	}
	return d.String()
}

func matchString(m xdsclient.RouteMatch) string {
	var parts []string
	switch {
	case m.Path != "":
		parts = append(parts, "path="+m.Path)
	case m.Regex != nil:
		parts = append(parts, "regex="+m.Regex.String())
	default:
		parts = append(parts, "prefix="+m.Prefix)
	}
	for _, h := range m.Headers {
		s := "header " + h.Name
		switch {
		case h.Match != nil:
			s += " " + stringMatcher(*h.Match)
		case h.Present != nil:
			s += fmt.Sprintf(" present=%v", *h.Present)
		case h.Range != nil:
			s += fmt.Sprintf(" in [%d,%d)", h.Range.Start, h.Range.End)
		}
		if h.Invert {
			s = "not " + s
		}
		parts = append(parts, s)
	}
	if m.FractionPerMillion != nil {
		parts = append(parts, "fraction="+percent(*m.FractionPerMillion))
	}
	return strings.Join(parts, " ")
}

func stringMatcher(m xdsclient.StringMatcher) string {
	kind := [...]string{"exact", "prefix", "suffix", "contains", "regex"}
	k := "match"
	if int(m.Kind) < len(kind) {
		k = kind[m.Kind]
	}
	v := m.Value
	if m.Kind == xdsclient.MatchRegex && m.Regex != nil {
		v = m.Regex.String()
	}
	if m.IgnoreCase {
		k += "(ignore case)"
	}
	return k + "=" + v
}

func clusterConfig(c *xdsclient.Cluster) ClusterConfig {
	v := ClusterConfig{Type: "EDS", EDSServiceName: c.EDSServiceName, LBPolicy: string(c.LBPolicy), MaxRequests: c.MaxRequests}
	if c.Type == xdsclient.ClusterLogicalDNS {
		v.Type = "LOGICAL_DNS " + c.DNSAddress
	}
	if v.LBPolicy == "" {
		v.LBPolicy = string(xdsclient.LBRoundRobin)
	}
	if od := c.OutlierDetection; od != nil {
		ov := &OutlierView{Interval: od.Interval.String(), BaseEjectionTime: od.BaseEjectionTime.String(),
			MaxEjectionPercent: od.MaxEjectionPercent, Consecutive5xx: od.Consecutive5xx, SuccessRate: od.SuccessRate != nil}
		if od.FailurePercentage != nil {
			ov.FailurePercentage = od.FailurePercentage.Threshold
		}
		v.OutlierDetection = ov
	}
	if t := c.TLS; t != nil {
		tv := &UpstreamTLSView{Roots: certRef(t.Roots), SNI: t.SNI}
		if t.Identity != nil {
			tv.Identity = certRef(*t.Identity)
		}
		for _, m := range t.SubjectAltNames {
			tv.SubjectAltNames = append(tv.SubjectAltNames, stringMatcher(m))
		}
		v.TLS = tv
	}
	return v
}

func certRef(r xdsclient.CertificateRef) string {
	if r.SDS {
		return "sds:" + r.Certificate
	}
	return r.Provider + "/" + r.Certificate
}

func endpointsConfig(e *xdsclient.Endpoints) EndpointsConfig {
	v := EndpointsConfig{Endpoints: []string{}}
	for _, l := range e.Localities {
		for _, ep := range l.Endpoints {
			v.Endpoints = append(v.Endpoints, ep.Address)
		}
	}
	return v
}

func secretConfig(s *xdsclient.Secret) SecretConfig {
	var v SecretConfig
	if s.Certificate != nil {
		// Only the chain: the key is not even in the value Dump returns.
		if c, err := CertificateFromPEM(s.Certificate.ChainPEM); err == nil {
			v.Certificate = &c
		}
	}
	if s.Validation != nil {
		for td := range s.Validation.Bundles {
			v.TrustDomains = append(v.TrustDomains, td)
		}
		slices.Sort(v.TrustDomains)
	}
	return v
}
