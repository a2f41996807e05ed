package transport

import (
	"crypto/x509"
	"fmt"
	"strconv"
	"strings"

	"mesh/xdsclient"
)

// matchSANs reports whether any SAN of cert satisfies any matcher (Envoy's
// match_subject_alt_names, gRFC A29): URI SANs (SPIFFE IDs), DNS SANs, IP
// SANs and email SANs are all candidates.
func matchSANs(cert *x509.Certificate, matchers []xdsclient.StringMatcher) bool {
	for i := range matchers {
		m := &matchers[i]
		for _, u := range cert.URIs {
			if m.Match(u.String()) {
				return true
			}
		}
		for _, dns := range cert.DNSNames {
			if matchDNS(m, dns) {
				return true
			}
		}
		for _, ip := range cert.IPAddresses {
			if m.Match(ip.String()) {
				return true
			}
		}
		for _, email := range cert.EmailAddresses {
			if m.Match(email) {
				return true
			}
		}
	}
	return false
}

// matchDNS applies m to a DNS SAN. As in Envoy and gRPC, an exact matcher
// also accepts a certificate wildcard "*.example.com" covering its value
// with exactly one leading label.
func matchDNS(m *xdsclient.StringMatcher, san string) bool {
	if m.Match(san) {
		return true
	}
	if m.Kind != xdsclient.MatchExact || !strings.HasPrefix(san, "*.") {
		return false
	}
	dot := strings.IndexByte(m.Value, '.')
	if dot <= 0 {
		return false
	}
	suffix := m.Value[dot:]
	if m.IgnoreCase {
		return strings.EqualFold(suffix, san[1:])
	}
	return suffix == san[1:]
}

// certSANs lists cert's SANs for error messages.
func certSANs(cert *x509.Certificate) []string {
	var sans []string
	for _, u := range cert.URIs {
		sans = append(sans, u.String())
	}
	sans = append(sans, cert.DNSNames...)
	for _, ip := range cert.IPAddresses {
		sans = append(sans, ip.String())
	}
	return append(sans, cert.EmailAddresses...)
}

// describeMatchers renders matchers for error messages, e.g.
// [exact "spiffe://td/ns/a/sa/b" prefix "spiffe://td/ns/a/"].
func describeMatchers(matchers []xdsclient.StringMatcher) string {
	parts := make([]string, len(matchers))
	for i, m := range matchers {
		var kind string
		switch m.Kind {
		case xdsclient.MatchExact:
			kind = "exact"
		case xdsclient.MatchPrefix:
			kind = "prefix"
		case xdsclient.MatchSuffix:
			kind = "suffix"
		case xdsclient.MatchContains:
			kind = "contains"
		case xdsclient.MatchRegex:
			kind = "regex"
		default:
			kind = fmt.Sprintf("kind(%d)", int(m.Kind))
		}
		value := m.Value
		if value == "" && m.Regex != nil {
			value = m.Regex.String()
		}
		parts[i] = kind + " " + strconv.Quote(value)
		if m.IgnoreCase {
			parts[i] += " (ignore case)"
		}
	}
	return "[" + strings.Join(parts, ", ") + "]"
}
