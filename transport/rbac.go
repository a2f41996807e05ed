package transport

import (
	"context"
	"crypto/x509"
	"net/netip"
	"strconv"
	"strings"

	"mesh/internal/incomingmd"
	"mesh/xdsclient"
)

// rbacRequest is what RBAC policies are evaluated against (gRFC A41): one
// request, the connection it came on, and the peer that sent it.
type rbacRequest struct {
	// PeerCertificate is the client's verified leaf certificate; nil for
	// plaintext clients and TLS clients that sent none. Only a verified
	// certificate may be set: "authenticated" principals trust it.
	PeerCertificate *x509.Certificate
	// Source and Destination are the connection's remote and local
	// addresses.
	Source, Destination netip.AddrPort
	// ServerName is the SNI the client sent, if any.
	ServerName string
	// Method, Path and Authority are the :method, :path and :authority
	// pseudo-headers; gRPC requests are POSTs to "/package.Service/Method".
	Method, Path, Authority string
	// Header returns the values of a header by lowercase name; nil means
	// no other headers but incoming's.
	Header func(name string) []string
	// incoming, when Header is nil, is a gRPC call's context, whose
	// incoming metadata holds the headers (and :authority, when Authority
	// is empty): read only as policies ask, and without building a
	// closure per call.
	incoming context.Context
	reader   incomingmd.Reader // reads incoming
	// peerURI is the text of PeerCertificate's only URI SAN when the
	// handshake already had it (a verified SPIFFE ID), sparing formatting
	// the URL per call.
	peerURI string
}

// header returns a header's value as RBAC header matchers see it: pseudo
// headers from the request line, several values joined with ",", binary
// ("-bin") headers never present (gRFC A41).
func (r *rbacRequest) header(name string) (string, bool) {
	name = strings.ToLower(name)
	switch name {
	case ":method":
		return r.Method, r.Method != ""
	case ":path":
		return r.Path, r.Path != ""
	case ":authority", "host":
		if r.Authority == "" && r.Header == nil && r.incoming != nil {
			r.Authority, _ = r.reader.Get(r.incoming, ":authority")
		}
		return r.Authority, r.Authority != ""
	case ":scheme":
		return "", false
	}
	if strings.HasSuffix(name, "-bin") {
		return "", false
	}
	var values []string
	switch {
	case r.Header != nil:
		values = r.Header(name)
	case r.incoming != nil:
		values = r.reader.Values(r.incoming, name) // not to be changed: grpc-go's own
	}
	if len(values) == 0 {
		return "", false
	}
	return strings.Join(values, ","), true
}

// urlPath is the path without its query, which url_path matchers see.
func (r *rbacRequest) urlPath() string {
	p, _, _ := strings.Cut(r.Path, "?")
	return p
}

// rbacDecision is the outcome of evaluating a chain of RBAC filters.
type rbacDecision struct {
	// Allowed is false when a DENY policy matched or no policy of an ALLOW
	// filter did.
	Allowed bool
	// Filter and Policy name what refused the request: the filter's name,
	// and the matching DENY policy (empty when an ALLOW filter matched no
	// policy).
	Filter, Policy string
	// Logged lists the LOG (istio AUDIT) policies that matched, as
	// "filter/policy"; they never refuse a request.
	Logged []string
}

// evaluateRBAC runs req through the RBAC filters among filters, in order,
// as Envoy's filter chain does: the first filter that refuses decides.
// Filters of other types and RBAC filters without rules are skipped.
func evaluateRBAC(filters []xdsclient.HTTPFilter, req *rbacRequest) rbacDecision {
	d := rbacDecision{Allowed: true}
	for i := range filters {
		cfg, ok := filters[i].Config.(*xdsclient.RBAC)
		if !ok || cfg == nil || cfg.Rules == nil {
			continue
		}
		policy, matched := matchRules(cfg.Rules, req)
		switch cfg.Rules.Action {
		case xdsclient.RBACAllow:
			if !matched {
				d.Allowed, d.Filter = false, filters[i].Name
				return d
			}
		case xdsclient.RBACDeny:
			if matched {
				d.Allowed, d.Filter, d.Policy = false, filters[i].Name, policy
				return d
			}
		case xdsclient.RBACLog:
			if matched {
				d.Logged = append(d.Logged, filters[i].Name+"/"+policy)
			}
		}
	}
	return d
}

// matchRules returns the first policy, by name, that matches req.
func matchRules(rules *xdsclient.RBACRules, req *rbacRequest) (string, bool) {
	for i := range rules.Policies {
		p := &rules.Policies[i]
		if anyPermission(p.Permissions, req) && anyPrincipal(p.Principals, req) {
			return p.Name, true
		}
	}
	return "", false
}

func anyPermission(ps []xdsclient.RBACPermission, req *rbacRequest) bool {
	for i := range ps {
		if matchPermission(&ps[i], req) {
			return true
		}
	}
	return false
}

func matchPermission(p *xdsclient.RBACPermission, req *rbacRequest) bool {
	switch p.Kind {
	case xdsclient.PermissionAny:
		return true
	case xdsclient.PermissionAnd:
		for i := range p.Rules {
			if !matchPermission(&p.Rules[i], req) {
				return false
			}
		}
		return true
	case xdsclient.PermissionOr:
		return anyPermission(p.Rules, req)
	case xdsclient.PermissionNot:
		return p.Rule != nil && !matchPermission(p.Rule, req)
	case xdsclient.PermissionHeader:
		return p.Header != nil && matchHeader(p.Header, req)
	case xdsclient.PermissionURLPath:
		return p.URLPath != nil && p.URLPath.Match(req.urlPath())
	case xdsclient.PermissionDestinationIP:
		return req.Destination.IsValid() && p.DestinationIP.Contains(req.Destination.Addr().Unmap())
	case xdsclient.PermissionDestinationPort:
		return req.Destination.IsValid() && uint32(req.Destination.Port()) == p.DestinationPort
	case xdsclient.PermissionDestinationPortRange:
		port := int64(req.Destination.Port())
		return req.Destination.IsValid() && port >= p.PortRange.Start && port < p.PortRange.End
	case xdsclient.PermissionRequestedServerName:
		return p.ServerName != nil && p.ServerName.Match(req.ServerName)
	}
	return false
}

func anyPrincipal(ps []xdsclient.RBACPrincipal, req *rbacRequest) bool {
	for i := range ps {
		if matchPrincipal(&ps[i], req) {
			return true
		}
	}
	return false
}

func matchPrincipal(p *xdsclient.RBACPrincipal, req *rbacRequest) bool {
	switch p.Kind {
	case xdsclient.PrincipalAny:
		return true
	case xdsclient.PrincipalAnd:
		for i := range p.IDs {
			if !matchPrincipal(&p.IDs[i], req) {
				return false
			}
		}
		return true
	case xdsclient.PrincipalOr:
		return anyPrincipal(p.IDs, req)
	case xdsclient.PrincipalNot:
		return p.ID != nil && !matchPrincipal(p.ID, req)
	case xdsclient.PrincipalAuthenticated:
		return matchAuthenticated(p.PrincipalName, req.PeerCertificate, req.peerURI)
	case xdsclient.PrincipalSourceIP:
		return req.Source.IsValid() && p.SourceIP.Contains(req.Source.Addr().Unmap())
	case xdsclient.PrincipalHeader:
		return p.Header != nil && matchHeader(p.Header, req)
	case xdsclient.PrincipalURLPath:
		return p.URLPath != nil && p.URLPath.Match(req.urlPath())
	}
	return false
}

// matchAuthenticated applies an authenticated principal's name matcher to
// a verified peer certificate: its URI SANs (SPIFFE IDs), then its DNS
// SANs, then its subject, as Envoy and gRFC A41 do. Without a matcher any
// verified peer matches; without a certificate nothing does.
func matchAuthenticated(name *xdsclient.StringMatcher, cert *x509.Certificate, uriText string) bool {
	if cert == nil {
		return false
	}
	if name == nil {
		return true
	}
	if uriText != "" && len(cert.URIs) == 1 {
		if name.Match(uriText) {
			return true
		}
	} else {
		for _, u := range cert.URIs {
			if name.Match(u.String()) {
				return true
			}
		}
	}
	for _, dns := range cert.DNSNames {
		if name.Match(dns) {
			return true
		}
	}
	return name.Match(cert.Subject.String())
}

func matchHeader(h *xdsclient.HeaderMatcher, req *rbacRequest) bool {
	value, present := req.header(h.Name)
	var matched bool
	switch {
	case h.Match != nil:
		matched = present && h.Match.Match(value)
	case h.Present != nil:
		matched = present == *h.Present
	case h.Range != nil:
		n, err := strconv.ParseInt(value, 10, 64)
		matched = present && err == nil && n >= h.Range.Start && n < h.Range.End
	default:
		matched = present
	}
	if h.Invert {
		return !matched
	}
	return matched
}
