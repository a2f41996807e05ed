// Package xdsview flattens the xDS client's decoded resources into the
// views the admin pages serve at /debug/config. It is apart from package
// admin so that admin's graph page, which the control plane serves, does
// not import xdsclient.
package xdsview

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"mesh/internal/admin"
	"mesh/xdsclient"
)

// Resources converts the xDS client's dump to what /debug/config serves.
func Resources(resources []xdsclient.ResourceStatus) []admin.ResourceView {
	out := make([]admin.ResourceView, 0, len(resources))
	for _, r := range resources {
		v := admin.ResourceView{
			Type: r.Type, TypeURL: r.TypeURL, Name: r.Name, Version: r.Version,
			Status: statusName(r.Status), IgnoredFields: r.Ignored,
			UpdatedAt: r.UpdatedAt, Source: r.Source, FromCache: r.FromCache,
			Config: configOf(r.Value),
		}
		if r.Error != nil {
			v.Error = r.Error.Error()
		}
		out = append(out, v)
	}
	return out
}

func statusName(s xdsclient.ResourceStatusKind) string {
	switch s {
	case xdsclient.StatusAcked:
		return "ACK"
	case xdsclient.StatusNACKed:
		return "NACK"
	default:
		return string(s)
	}
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

func listenerConfig(l *xdsclient.Listener) admin.ListenerConfig {
	v := admin.ListenerConfig{Address: l.Address}
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

func routeConfig(rc *xdsclient.RouteConfig) admin.RouteConfigView {
	out := admin.RouteConfigView{VirtualHosts: []admin.VirtualHostView{}}
	for _, vh := range rc.VirtualHosts {
		vv := admin.VirtualHostView{Name: vh.Name, Domains: vh.Domains, Routes: []admin.RouteView{}}
		for _, r := range vh.Routes {
			vv.Routes = append(vv.Routes, routeView(r))
		}
		out.VirtualHosts = append(out.VirtualHosts, vv)
	}
	return out
}

func routeView(r xdsclient.Route) admin.RouteView {
	a := r.Action
	v := admin.RouteView{Name: r.Name, Match: matchString(r.Match), Cluster: a.Cluster, NonForwarding: r.NonForwarding}
	if a.ClusterHeader != "" {
		v.Cluster = "header:" + a.ClusterHeader
	}
	for _, w := range a.WeightedClusters {
		v.Weighted = append(v.Weighted, admin.WeightView{Cluster: w.Name, Weight: w.Weight})
	}
	if a.Timeout > 0 {
		v.Timeout = a.Timeout.String()
	}
	if p := a.RetryPolicy; p != nil {
		rv := &admin.RetryView{Attempts: p.NumRetries, On: []string{}, PerTryTimeout: dur(p.PerTryTimeout),
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

func faultView(name string, f *xdsclient.FaultInjection) admin.FaultView {
	v := admin.FaultView{Filter: name, MaxActiveFaults: f.MaxActiveFaults}
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

func clusterConfig(c *xdsclient.Cluster) admin.ClusterConfig {
	v := admin.ClusterConfig{Type: "EDS", EDSServiceName: c.EDSServiceName, LBPolicy: string(c.LBPolicy), MaxRequests: c.MaxRequests}
	if c.Type == xdsclient.ClusterLogicalDNS {
		v.Type = "LOGICAL_DNS " + c.DNSAddress
	}
	if v.LBPolicy == "" {
		v.LBPolicy = string(xdsclient.LBRoundRobin)
	}
	if od := c.OutlierDetection; od != nil {
		ov := &admin.OutlierView{Interval: od.Interval.String(), BaseEjectionTime: od.BaseEjectionTime.String(),
			MaxEjectionPercent: od.MaxEjectionPercent, Consecutive5xx: od.Consecutive5xx, SuccessRate: od.SuccessRate != nil}
		if od.FailurePercentage != nil {
			ov.FailurePercentage = od.FailurePercentage.Threshold
		}
		v.OutlierDetection = ov
	}
	if t := c.TLS; t != nil {
		tv := &admin.UpstreamTLSView{Roots: certRef(t.Roots), SNI: t.SNI}
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

func endpointsConfig(e *xdsclient.Endpoints) admin.EndpointsConfig {
	v := admin.EndpointsConfig{Endpoints: []string{}}
	for _, l := range e.Localities {
		for _, ep := range l.Endpoints {
			v.Endpoints = append(v.Endpoints, ep.Address)
		}
	}
	return v
}

func secretConfig(s *xdsclient.Secret) admin.SecretConfig {
	var v admin.SecretConfig
	if s.Certificate != nil {
		// Only the chain: the key is not even in the value Dump returns.
		if c, err := admin.CertificateFromPEM(s.Certificate.ChainPEM); err == nil {
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
