package transport

import (
	"net"
	"net/netip"

	"mesh/xdsclient"
)

// selectFilterChain picks the filter chain for a connection the way gRFC A36
// does, with Envoy's transport protocol step added: narrowing the candidates
// by the most specific destination prefix, then transport protocol, then
// source type, then source prefix, then source port, falling back to the
// default filter chain.
func selectFilterChain(l *xdsclient.Listener, local, remote net.Addr, transportProtocol string) *xdsclient.FilterChain {
	dst := addrPortOf(local)
	src := addrPortOf(remote)
	// Chosen per RPC when a listener changed: candidates live on the
	// stack, and keepBest filters in place.
	var buf [8]*xdsclient.FilterChain
	cands := buf[:0]
	for i := range l.FilterChains {
		fc := &l.FilterChains[i]
		// gRPC servers listen on one port, so chains matching on a
		// destination port or on an application protocol never match.
		if fc.Match.DestinationPort != 0 || len(fc.Match.ApplicationProtocols) > 0 {
			continue
		}
		cands = append(cands, fc)
	}
	cands = keepBest(cands, func(fc *xdsclient.FilterChain) int { return prefixScore(fc.Match.PrefixRanges, dst.Addr()) })
	cands = keepBest(cands, func(fc *xdsclient.FilterChain) int {
		switch fc.Match.TransportProtocol {
		case "":
			return 0
		case transportProtocol:
			return 1
		}
		return -1
	})
	cands = keepBest(cands, func(fc *xdsclient.FilterChain) int {
		return sourceTypeScore(fc.Match.SourceType, dst.Addr(), src.Addr())
	})
	cands = keepBest(cands, func(fc *xdsclient.FilterChain) int { return prefixScore(fc.Match.SourcePrefixRanges, src.Addr()) })
	cands = keepBest(cands, func(fc *xdsclient.FilterChain) int { return portScore(fc.Match.SourcePorts, src.Port()) })
	if len(cands) > 0 {
		return cands[0]
	}
	return l.DefaultFilterChain
}

// keepBest keeps the candidates with the highest non-negative score.
func keepBest(cands []*xdsclient.FilterChain, score func(*xdsclient.FilterChain) int) []*xdsclient.FilterChain {
	best := -1
	out := cands[:0] // writes never overtake the reads
	for _, fc := range cands {
		switch s := score(fc); {
		case s > best:
			best, out = s, append(out[:0], fc)
		case s == best && s >= 0:
			out = append(out, fc)
		}
	}
	return out
}

// prefixScore is the longest matching prefix length plus one; 0 when the
// chain has no prefixes (matches anything); -1 when none match.
func prefixScore(prefixes []netip.Prefix, ip netip.Addr) int {
	if len(prefixes) == 0 {
		return 0
	}
	best := -1
	for _, p := range prefixes {
		if p.Contains(ip.Unmap()) && p.Bits()+1 > best {
			best = p.Bits() + 1
		}
	}
	return best
}

func sourceTypeScore(t xdsclient.SourceType, dst, src netip.Addr) int {
	local := src.IsLoopback() || src == dst
	switch t {
	case xdsclient.SourceSameIPOrLoopback:
		if local {
			return 1
		}
		return -1
	case xdsclient.SourceExternal:
		if !local {
			return 1
		}
		return -1
	}
	return 0
}

func portScore(ports []uint32, port uint16) int {
	if len(ports) == 0 {
		return 0
	}
	for _, p := range ports {
		if p == uint32(port) {
			return 1
		}
	}
	return -1
}

// protocolOf is the transport protocol a connection served by fc spoke.
func protocolOf(fc *xdsclient.FilterChain) string {
	if fc != nil && fc.TLS != nil {
		return ProtocolTLS
	}
	return ProtocolRawBuffer
}

// sameHandshake reports whether a connection handshaken under chain a is
// still admitted under chain b: same TLS settings, or both plaintext.
// Other differences (RBAC policies) apply to open connections as they are.
func sameHandshake(a, b *xdsclient.FilterChain) bool {
	if a == nil || b == nil {
		return false
	}
	if a.TLS == nil || b.TLS == nil {
		return a.TLS == nil && b.TLS == nil
	}
	x, y := a.TLS, b.TLS
	return x.Identity == y.Identity && x.RequireClientCertificate == y.RequireClientCertificate &&
		(x.Roots == nil) == (y.Roots == nil) && (x.Roots == nil || *x.Roots == *y.Roots)
}

// refusingChain is a chain whose one RBAC filter allows nothing: what the
// authorizer enforces on a connection being drained. Its filter's name
// says why, in the log line of each refusal.
func refusingChain(why string) *xdsclient.FilterChain {
	return &xdsclient.FilterChain{Name: "draining", HTTP: &xdsclient.HTTPConnectionManager{
		HTTPFilters: []xdsclient.HTTPFilter{{
			Name:   "mesh.draining: " + why,
			Config: &xdsclient.RBAC{Rules: &xdsclient.RBACRules{Action: xdsclient.RBACAllow}},
		}},
	}}
}
