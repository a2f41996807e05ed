package transport

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/credentials"

	"mesh/xdsclient"
)

// Chooser picks the server listener's filter chain for one accepted
// connection. transportProtocol is what the client's first bytes say it
// speaks (ProtocolTLS or ProtocolRawBuffer), to be matched against
// FilterChainMatch.TransportProtocol. The chain's TLS settings decide the
// handshake (nil: plaintext); an error or a nil chain rejects the
// connection. The chain is reported in AuthInfo.FilterChain, where the
// Authorizer finds its HTTP filters.
type Chooser = func(conn net.Conn, transportProtocol string) (*xdsclient.FilterChain, error)

type serverCredentials struct {
	providers    Providers
	chooser      Chooser
	logger       *slog.Logger
	sniffTimeout time.Duration
	alpn         []string // accepted application protocols; "" for none offered
	peerMetadata string   // WithPeerMetadata
}

// NewServerCredentials returns gRPC transport credentials for mesh servers.
// Each connection's first bytes are read (within 10s) to tell TLS clients
// from plaintext ones, then chooser picks its filter chain: a
// chain without TLS settings serves it in plaintext; otherwise the server
// presents the SVID of the Identity provider and, when
// Roots is set, verifies client certificates against the Roots provider's
// bundle for the client's trust domain. RequireClientCertificate rejects
// clients without a certificate, plaintext clients included. A nil chooser
// rejects every connection.
func NewServerCredentials(providers Providers, chooser Chooser, opts ...ServerOption) credentials.TransportCredentials {
	return newServerCredentials(providers, chooser, newOptions(ServerOption.applyServer, opts))
}

func newServerCredentials(providers Providers, chooser Chooser, o options) *serverCredentials {
	return &serverCredentials{providers: providers, chooser: chooser, logger: o.logger, sniffTimeout: o.sniffTimeout, alpn: o.alpn, peerMetadata: o.peerMetadata}
}

func (s *serverCredentials) ServerHandshake(rawConn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	conn, authInfo, err := s.handshake(rawConn)
	if err != nil {
		err = fmt.Errorf("transport: connection from %s to %s: %w", rawConn.RemoteAddr(), rawConn.LocalAddr(), err)
		s.logger.Warn("transport: server handshake failed", "peer", rawConn.RemoteAddr().String(), "error", err)
		return nil, nil, err
	}
	return conn, authInfo, nil
}

func (s *serverCredentials) handshake(rawConn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	if s.chooser == nil {
		return nil, nil, errors.New("rejected: server credentials have no chooser")
	}
	sniffed, protocol, err := sniff(rawConn, s.sniffTimeout)
	if err != nil {
		return nil, nil, err
	}
	fc, err := s.chooser(sniffed, protocol)
	if err != nil {
		return nil, nil, fmt.Errorf("rejected: %w", err)
	}
	if fc == nil {
		return nil, nil, fmt.Errorf("rejected: no filter chain for a %s connection", protocol)
	}
	settings := fc.TLS
	if settings == nil {
		// gRPC clears the handshake deadline itself once we return.
		ai := plaintextAuthInfo()
		ai.FilterChain = fc
		return sniffed, ai, nil
	}
	if protocol != ProtocolTLS {
		return nil, nil, fmt.Errorf("rejected: plaintext client, but filter chain %q requires TLS", fc.Name)
	}
	cfg, err := s.tlsConfig(settings)
	if err != nil {
		return nil, nil, err
	}
	conn := tls.Server(sniffed, cfg)
	if err := conn.Handshake(); err != nil {
		_ = conn.Close()
		return nil, nil, fmt.Errorf("tls handshake: %w", err)
	}
	state := conn.ConnectionState()
	var peerMetadata string
	if state.NegotiatedProtocol == alpnH2PeerMetadata {
		if s.peerMetadata == "" {
			_ = conn.Close()
			return nil, nil, errNoExchange
		}
		// grpc-go's handshake deadline, set on rawConn, bounds the reads.
		if peerMetadata, err = exchangePeerMetadata(conn, s.peerMetadata, time.Time{}); err != nil {
			_ = conn.Close()
			return nil, nil, err
		}
	} else if !slices.Contains(s.alpn, state.NegotiatedProtocol) {
		_ = conn.Close()
		return nil, nil, fmt.Errorf("client did not negotiate an ALPN protocol of %q (got %q)", s.alpn, state.NegotiatedProtocol)
	}
	var id spiffeid.ID
	// Peer certificates are only accepted after verification, which needs
	// Roots; without Roots the server never asks for them.
	if settings.Roots != nil && len(state.PeerCertificates) > 0 {
		if id, err = x509svid.IDFromCert(state.PeerCertificates[0]); err != nil {
			_ = conn.Close()
			return nil, nil, fmt.Errorf("client certificate: %w", err)
		}
	}
	return conn, AuthInfo{
		CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity},
		State:          &state,
		PeerID:         id,
		FilterChain:    fc,
		PeerMetadata:   peerMetadata,
	}, nil
}

func (s *serverCredentials) tlsConfig(settings *xdsclient.DownstreamTLS) (*tls.Config, error) {
	ident, err := lookupProvider(s.providers, settings.Identity.Provider, "identity")
	if err != nil {
		return nil, err
	}
	get := certificateFrom(settings.Identity.Provider, ident)
	cfg := &tls.Config{
		MinVersion:     tls.VersionTLS12,
		NextProtos:     s.nextProtos(),
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) { return get() },
		ClientAuth:     tls.NoClientCert,
	}
	if settings.Roots == nil {
		if settings.RequireClientCertificate {
			return nil, errors.New("tls settings require a client certificate but name no roots to verify it")
		}
		return cfg, nil
	}
	roots, err := lookupProvider(s.providers, settings.Roots.Provider, "roots")
	if err != nil {
		return nil, err
	}
	cfg.ClientAuth = tls.RequestClientCert
	if settings.RequireClientCertificate {
		// Any: the chain is verified as an SVID below, not by crypto/tls,
		// whose ClientCAs cannot choose roots by the client's trust domain.
		cfg.ClientAuth = tls.RequireAnyClientCert
	}
	cfg.VerifyPeerCertificate = func(raw [][]byte, _ [][]*x509.Certificate) error {
		if len(raw) == 0 {
			return nil // optional certificate not sent; RequireAnyClientCert already refused this case
		}
		if _, _, err := verifyChain(raw, roots); err != nil {
			return fmt.Errorf("cannot verify client certificate: %w", err)
		}
		return nil
	}
	return cfg, nil
}

// nextProtos is what the server offers by ALPN, in order of preference:
// the peer metadata exchange first, when it has metadata to exchange.
func (s *serverCredentials) nextProtos() []string {
	protos := slices.DeleteFunc(slices.Clone(s.alpn), func(p string) bool { return p == "" })
	if s.peerMetadata != "" {
		protos = append([]string{alpnH2PeerMetadata}, protos...)
	}
	return protos
}

func (s *serverCredentials) ClientHandshake(_ context.Context, _ string, _ net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("transport: server credentials cannot dial; use NewClientCredentials")
}

func (s *serverCredentials) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: securityProtocol}
}

func (s *serverCredentials) Clone() credentials.TransportCredentials {
	clone := *s
	return &clone
}

// OverrideServerName has no meaning for servers.
func (s *serverCredentials) OverrideServerName(string) error { return nil }
