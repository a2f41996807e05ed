package transport

import (
	"bytes"
	"crypto/x509"
	"io"
	"net"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"mesh/xdsclient"
)

// FuzzSniff feeds arbitrary first bytes through the PERMISSIVE sniffer:
// it must classify without panicking, call only a TLS handshake record TLS,
// and replay every byte unchanged to whoever reads the connection next.
func FuzzSniff(f *testing.F) {
	f.Add([]byte{0x16, 0x03, 0x01, 0x00, 0xa5, 0x01})
	f.Add([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"))
	f.Add([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
	f.Add([]byte{0x16})
	f.Add([]byte{0x16, 0x02})
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) == 0 {
			return
		}
		client, server := net.Pipe()
		defer server.Close()
		go func() {
			_, _ = client.Write(data)
			client.Close()
		}()
		conn, protocol, err := sniff(server, 5*time.Second)
		if err != nil {
			t.Fatalf("sniff: %v", err)
		}
		// The verdict rests on what the first read returned, a prefix of data.
		first := conn.(*sniffedConn).pending
		if len(first) == 0 || !bytes.HasPrefix(data, first) {
			t.Fatalf("sniffed % x, not a prefix of the input", first)
		}
		isTLS := first[0] == 0x16 && (len(first) == 1 || first[1] == 0x03)
		if want := map[bool]string{true: ProtocolTLS, false: ProtocolRawBuffer}[isTLS]; protocol != want {
			t.Fatalf("protocol = %s for % x, want %s", protocol, first[:min(len(first), 4)], want)
		}
		replayed, err := io.ReadAll(conn)
		if err != nil {
			t.Fatalf("read after sniff: %v", err)
		}
		if !bytes.Equal(replayed, data) {
			t.Fatalf("replayed %d bytes % x, want % x", len(replayed), replayed, data)
		}
	})
}

// FuzzMatchSANs checks the SAN matcher against arbitrary matchers and
// SANs: no panics, an exact matcher always accepts its own value, and a
// DNS wildcard SAN is accepted only for a name exactly one label below it.
func FuzzMatchSANs(f *testing.F) {
	f.Add(0, "spiffe://example.org/ns/default/sa/payments", false, "spiffe://example.org/ns/default/sa/payments")
	f.Add(1, "spiffe://example.org/ns/", true, "SPIFFE://example.org/ns/default/sa/x")
	f.Add(0, "api.example.com", false, "*.example.com")
	f.Add(0, "example.com", false, "*.com")
	f.Add(4, "spiffe://.*/sa/[a-z]+", false, "spiffe://td/sa/abc")
	f.Add(3, "default", true, "10.0.0.1")
	f.Fuzz(func(t *testing.T, kind int, value string, ignoreCase bool, san string) {
		m := xdsclient.StringMatcher{Kind: xdsclient.MatchKind(((kind % 5) + 5) % 5), Value: value, IgnoreCase: ignoreCase}
		if m.Kind == xdsclient.MatchRegex {
			re, err := compileForFuzz(value)
			if err != nil {
				return
			}
			m.Regex = re
		}
		cert := &x509.Certificate{}
		switch {
		case strings.Contains(san, "://"):
			u, err := url.Parse(san)
			if err != nil {
				return
			}
			cert.URIs = []*url.URL{u}
		case net.ParseIP(san) != nil:
			cert.IPAddresses = []net.IP{net.ParseIP(san)}
		default:
			cert.DNSNames = []string{san}
		}
		got := matchSANs(cert, []xdsclient.StringMatcher{m})
		_ = certSANs(cert)
		_ = describeMatchers([]xdsclient.StringMatcher{m})

		if len(cert.DNSNames) == 1 && m.Kind == xdsclient.MatchExact && !ignoreCase {
			name := cert.DNSNames[0]
			switch {
			case name == value && !got:
				t.Fatalf("exact matcher %q rejected its own value", value)
			case got && name != value:
				// Only the wildcard rule may accept a different name.
				dot := strings.IndexByte(value, '.')
				if !strings.HasPrefix(name, "*.") || dot <= 0 || value[dot:] != name[1:] {
					t.Fatalf("exact matcher %q accepted unrelated SAN %q", value, name)
				}
			}
		}
	})
}

func compileForFuzz(pattern string) (*regexp.Regexp, error) {
	return regexp.Compile("^(?:" + pattern + ")$")
}
