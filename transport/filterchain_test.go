package transport

import (
	"log/slog"
	"net"
	"net/netip"
	"testing"

	"mesh/xdsclient"
)

func prefixes(ps ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(ps))
	for i, p := range ps {
		out[i] = netip.MustParsePrefix(p)
	}
	return out
}

func tcp(addr string) net.Addr { return net.TCPAddrFromAddrPort(netip.MustParseAddrPort(addr)) }

// TestSelectFilterChain: each step of the match narrows the candidates in
// Envoy's order, the most specific match of a step winning over a
// catch-all, and the default chain serving what no chain matches.
func TestSelectFilterChain(t *testing.T) {
	def := &xdsclient.FilterChain{Name: "default"}
	for _, tc := range []struct {
		name          string
		chains        []xdsclient.FilterChain
		noDefault     bool
		local, remote string
		protocol      string
		want          string // chain name; "" for none
	}{
		{
			name: "longest destination prefix wins",
			chains: []xdsclient.FilterChain{
				{Name: "wide", Match: xdsclient.FilterChainMatch{PrefixRanges: prefixes("10.0.0.0/8")}},
				{Name: "narrow", Match: xdsclient.FilterChainMatch{PrefixRanges: prefixes("10.1.0.0/16")}},
				{Name: "any"},
			},
			local: "10.1.2.3:8080", remote: "10.9.9.9:5000", protocol: ProtocolTLS, want: "narrow",
		},
		{
			name: "a destination prefix beats none",
			chains: []xdsclient.FilterChain{
				{Name: "any"},
				{Name: "wide", Match: xdsclient.FilterChainMatch{PrefixRanges: prefixes("10.0.0.0/8")}},
			},
			local: "10.1.2.3:8080", remote: "10.9.9.9:5000", protocol: ProtocolTLS, want: "wide",
		},
		{
			name: "no destination prefix matches: default",
			chains: []xdsclient.FilterChain{
				{Name: "other", Match: xdsclient.FilterChainMatch{PrefixRanges: prefixes("192.168.0.0/16")}},
			},
			local: "10.1.2.3:8080", remote: "10.9.9.9:5000", protocol: ProtocolTLS, want: "default",
		},
		{
			name: "IPv4-mapped destination matches an IPv4 prefix",
			chains: []xdsclient.FilterChain{
				{Name: "v4", Match: xdsclient.FilterChainMatch{PrefixRanges: prefixes("10.0.0.0/8")}},
			},
			local: "[::ffff:10.1.2.3]:8080", remote: "[::ffff:10.9.9.9]:5000", protocol: ProtocolTLS, want: "v4",
		},
		{
			name:   "PERMISSIVE: a TLS client gets the tls chain",
			chains: permissive(),
			local:  "127.0.0.1:8080", remote: "127.0.0.1:5000", protocol: ProtocolTLS, want: "mtls",
		},
		{
			name:   "PERMISSIVE: a plaintext client gets the raw_buffer chain",
			chains: permissive(),
			local:  "127.0.0.1:8080", remote: "127.0.0.1:5000", protocol: ProtocolRawBuffer, want: "plaintext",
		},
		{
			name: "STRICT: a plaintext client matches no chain and there is no default",
			chains: []xdsclient.FilterChain{
				{Name: "mtls", Match: xdsclient.FilterChainMatch{TransportProtocol: ProtocolTLS}},
			},
			noDefault: true,
			local:     "127.0.0.1:8080", remote: "127.0.0.1:5000", protocol: ProtocolRawBuffer, want: "",
		},
		{
			name: "a transport protocol beats none",
			chains: []xdsclient.FilterChain{
				{Name: "any"},
				{Name: "mtls", Match: xdsclient.FilterChainMatch{TransportProtocol: ProtocolTLS}},
			},
			local: "127.0.0.1:8080", remote: "127.0.0.1:5000", protocol: ProtocolTLS, want: "mtls",
		},
		{
			name: "destination prefix is decided before transport protocol",
			chains: []xdsclient.FilterChain{
				{Name: "tls-any-address", Match: xdsclient.FilterChainMatch{TransportProtocol: ProtocolTLS}},
				{Name: "address-any-protocol", Match: xdsclient.FilterChainMatch{PrefixRanges: prefixes("10.1.2.3/32")}},
			},
			local: "10.1.2.3:8080", remote: "10.9.9.9:5000", protocol: ProtocolTLS, want: "address-any-protocol",
		},
		{
			name: "same IP or loopback source",
			chains: []xdsclient.FilterChain{
				{Name: "external", Match: xdsclient.FilterChainMatch{SourceType: xdsclient.SourceExternal}},
				{Name: "local", Match: xdsclient.FilterChainMatch{SourceType: xdsclient.SourceSameIPOrLoopback}},
			},
			local: "10.1.2.3:8080", remote: "10.1.2.3:5000", protocol: ProtocolTLS, want: "local",
		},
		{
			name: "external source",
			chains: []xdsclient.FilterChain{
				{Name: "local", Match: xdsclient.FilterChainMatch{SourceType: xdsclient.SourceSameIPOrLoopback}},
				{Name: "external", Match: xdsclient.FilterChainMatch{SourceType: xdsclient.SourceExternal}},
			},
			local: "10.1.2.3:8080", remote: "10.9.9.9:5000", protocol: ProtocolTLS, want: "external",
		},
		{
			name: "loopback source is local",
			chains: []xdsclient.FilterChain{
				{Name: "external", Match: xdsclient.FilterChainMatch{SourceType: xdsclient.SourceExternal}},
			},
			local: "10.1.2.3:8080", remote: "127.0.0.1:5000", protocol: ProtocolTLS, want: "default",
		},
		{
			name: "longest source prefix wins",
			chains: []xdsclient.FilterChain{
				{Name: "wide", Match: xdsclient.FilterChainMatch{SourcePrefixRanges: prefixes("10.0.0.0/8")}},
				{Name: "narrow", Match: xdsclient.FilterChainMatch{SourcePrefixRanges: prefixes("192.168.0.0/16", "10.9.0.0/16")}},
			},
			local: "10.1.2.3:8080", remote: "10.9.9.9:5000", protocol: ProtocolTLS, want: "narrow",
		},
		{
			name: "source port",
			chains: []xdsclient.FilterChain{
				{Name: "other-port", Match: xdsclient.FilterChainMatch{SourcePorts: []uint32{6000}}},
				{Name: "any-port"},
				{Name: "this-port", Match: xdsclient.FilterChainMatch{SourcePorts: []uint32{4000, 5000}}},
			},
			local: "10.1.2.3:8080", remote: "10.9.9.9:5000", protocol: ProtocolTLS, want: "this-port",
		},
		{
			name: "chains on a destination port or application protocol never match",
			chains: []xdsclient.FilterChain{
				{Name: "port", Match: xdsclient.FilterChainMatch{DestinationPort: 8080}},
				{Name: "alpn", Match: xdsclient.FilterChainMatch{ApplicationProtocols: []string{"h2"}}},
			},
			local: "10.1.2.3:8080", remote: "10.9.9.9:5000", protocol: ProtocolTLS, want: "default",
		},
		{
			name: "ties go to the first chain",
			chains: []xdsclient.FilterChain{
				{Name: "first", Match: xdsclient.FilterChainMatch{TransportProtocol: ProtocolTLS}},
				{Name: "second", Match: xdsclient.FilterChainMatch{TransportProtocol: ProtocolTLS}},
			},
			local: "10.1.2.3:8080", remote: "10.9.9.9:5000", protocol: ProtocolTLS, want: "first",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := &xdsclient.Listener{Name: "inbound", FilterChains: tc.chains, DefaultFilterChain: def}
			if tc.noDefault {
				l.DefaultFilterChain = nil
			}
			got := selectFilterChain(l, tcp(tc.local), tcp(tc.remote), tc.protocol)
			name := ""
			if got != nil {
				name = got.Name
			}
			if name != tc.want {
				t.Errorf("chain = %q, want %q", name, tc.want)
			}
		})
	}
}

func permissive() []xdsclient.FilterChain {
	return []xdsclient.FilterChain{
		{Name: "mtls", Match: xdsclient.FilterChainMatch{TransportProtocol: ProtocolTLS}, TLS: &xdsclient.DownstreamTLS{}},
		{Name: "plaintext", Match: xdsclient.FilterChainMatch{TransportProtocol: ProtocolRawBuffer}},
	}
}

// The choice runs for RPCs on connections whose listener changed: it must
// not allocate.
func TestSelectFilterChainDoesNotAllocate(t *testing.T) {
	l := &xdsclient.Listener{FilterChains: permissive()}
	local, remote := tcp("10.1.2.3:8080"), tcp("10.9.9.9:5000")
	if n := testing.AllocsPerRun(100, func() { selectFilterChain(l, local, remote, ProtocolRawBuffer) }); n != 0 {
		t.Errorf("selectFilterChain: %v allocations, want 0", n)
	}
}

// TestSameHandshake: a connection stays admitted when the new chain would
// handshake it the same way, whatever its policies.
func TestSameHandshake(t *testing.T) {
	strict := &xdsclient.DownstreamTLS{
		Identity:                 xdsclient.CertificateRef{Provider: "default", Certificate: "default"},
		Roots:                    &xdsclient.CertificateRef{Provider: "default", Certificate: "ROOTCA"},
		RequireClientCertificate: true,
	}
	optional := *strict
	optional.RequireClientCertificate = false
	otherRoots := *strict
	otherRoots.Roots = &xdsclient.CertificateRef{Provider: "spire", Certificate: "ROOTCA"}
	noRoots := *strict
	noRoots.Roots = nil
	strictCopy := *strict
	withPolicy := &xdsclient.FilterChain{TLS: &strictCopy, HTTP: &xdsclient.HTTPConnectionManager{}}
	for _, tc := range []struct {
		name string
		a, b *xdsclient.FilterChain
		want bool
	}{
		{"same TLS settings, other policies", &xdsclient.FilterChain{TLS: strict}, withPolicy, true},
		{"both plaintext", &xdsclient.FilterChain{}, &xdsclient.FilterChain{Name: "other"}, true},
		{"plaintext, then TLS", &xdsclient.FilterChain{}, &xdsclient.FilterChain{TLS: strict}, false},
		{"TLS, then plaintext", &xdsclient.FilterChain{TLS: strict}, &xdsclient.FilterChain{}, false},
		{"client certificate no longer optional", &xdsclient.FilterChain{TLS: &optional}, &xdsclient.FilterChain{TLS: strict}, false},
		{"other roots", &xdsclient.FilterChain{TLS: strict}, &xdsclient.FilterChain{TLS: &otherRoots}, false},
		{"roots gone", &xdsclient.FilterChain{TLS: strict}, &xdsclient.FilterChain{TLS: &noRoots}, false},
		{"no chain now", &xdsclient.FilterChain{TLS: strict}, nil, false},
	} {
		if got := sameHandshake(tc.a, tc.b); got != tc.want {
			t.Errorf("%s: sameHandshake = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// TestCurrentChain: what the authorizer enforces on an open connection
// once its listener resource changed: the chain it was accepted under
// while the resource is unchanged, the new matching chain when that
// handshakes alike (a policy change applies at once), and a chain that
// refuses everything when the connection is no longer admitted as it was
// handshaken or the resource is gone.
func TestCurrentChain(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	first := &xdsclient.Listener{Name: "inbound", FilterChains: permissive()}
	s := NewGRPCInbound(fixedListener{first}, nil, WithLogger(slog.New(slog.DiscardHandler)))
	sl := s.Listen(lis, "inbound").(*servingListener)
	defer sl.Close()
	local, remote := lis.Addr(), tcp("127.0.0.1:40000")
	plaintext, mtls := &first.FilterChains[1], &first.FilterChains[0]

	if got := s.currentChain(local, remote, plaintext); got != nil {
		t.Errorf("unchanged resource: %q, want the chain chosen at accept", got.Name)
	}
	newPolicy := &xdsclient.Listener{Name: "inbound", FilterChains: permissive()}
	newPolicy.FilterChains[1].HTTP = &xdsclient.HTTPConnectionManager{}
	sl.onUpdate(xdsclient.Event[*xdsclient.Listener]{Resource: newPolicy})
	if got := s.currentChain(local, remote, plaintext); got != &newPolicy.FilterChains[1] {
		t.Errorf("policy changed: %v, want the new plaintext chain", got)
	}
	strict := &xdsclient.Listener{Name: "inbound", FilterChains: permissive()[:1]}
	sl.onUpdate(xdsclient.Event[*xdsclient.Listener]{Resource: strict})
	if got := s.currentChain(local, remote, plaintext); got == nil || got.Name != "draining" {
		t.Errorf("plaintext connection under STRICT: %v, want the refusing chain", got)
	}
	if got := s.currentChain(local, remote, mtls); got != &strict.FilterChains[0] {
		t.Errorf("mTLS connection under STRICT: %v, want the mTLS chain", got)
	}
	sl.onUpdate(xdsclient.Event[*xdsclient.Listener]{NotFound: true})
	if got := s.currentChain(local, remote, mtls); got == nil || got.Name != "draining" {
		t.Errorf("resource gone: %v, want the refusing chain", got)
	}
	other := tcp("127.0.0.1:1") // a port this server does not serve
	if got := s.currentChain(other, remote, mtls); got != nil {
		t.Errorf("connection of another listener: %v, want nil", got)
	}
}
