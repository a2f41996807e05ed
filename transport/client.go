package transport

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/credentials"

	"mesh/identity"
	"mesh/internal/handshake"
	"mesh/xdsclient"
)

type clientCredentials struct {
	providers          Providers
	logger             *slog.Logger
	failures           *failureLog
	serverNameOverride string
	peerMetadata       string // WithPeerMetadata
}

// NewClientCredentials returns gRPC transport credentials for mesh clients.
// Each connection is secured as the cluster of its address says (the mesh's
// balancer attaches the cluster's TLS settings to each address it hands
// gRPC): no TLS settings means plaintext; otherwise TLS with the SVID of the
// Identity provider as client certificate (when set), the server's chain
// verified against the Roots provider's bundle for the server's trust
// domain, and the server's SANs checked against SubjectAltNames (any match;
// none configured accepts any identity the bundle verifies).
//
// Certificate names within a provider ("default", "ROOTCA" in istio's
// output) are not interpreted: the Identity provider supplies the SVID and
// the Roots provider the bundles.
func NewClientCredentials(providers Providers, opts ...ClientOption) credentials.TransportCredentials {
	return newClientCredentials(providers, opts)
}

func newClientCredentials(providers Providers, opts []ClientOption) *clientCredentials {
	o := newOptions(ClientOption.applyClient, opts)
	return &clientCredentials{providers: providers, logger: o.logger, failures: newFailureLog(o.logger), peerMetadata: o.peerMetadata}
}

func (c *clientCredentials) ClientHandshake(ctx context.Context, authority string, rawConn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	info := handshake.FromContext(ctx)
	if info == nil || info.TLS == nil {
		return rawConn, plaintextAuthInfo(), nil
	}
	conn, authInfo, err := c.handshakeTLS(ctx, authority, rawConn, info.TLS)
	if err != nil {
		c.failures.handshakeFailed(ctx, info.Cluster, rawConn.RemoteAddr().String(), err)
		return nil, nil, fmt.Errorf("transport: cluster %s: tls handshake with %s: %w", info.Cluster, rawConn.RemoteAddr(), err)
	}
	return conn, authInfo, nil
}

func (c *clientCredentials) handshakeTLS(ctx context.Context, authority string, rawConn net.Conn, settings *xdsclient.UpstreamTLS) (net.Conn, credentials.AuthInfo, error) {
	cfg, err := c.tlsConfig(authority, settings)
	if err != nil {
		return nil, nil, err
	}
	if c.peerMetadata != "" {
		cfg.NextProtos = []string{alpnH2PeerMetadata, alpnH2}
	}
	conn := tls.Client(rawConn, cfg)
	if err := conn.HandshakeContext(ctx); err != nil {
		_ = conn.Close()
		return nil, nil, err
	}
	state := conn.ConnectionState()
	var peerMetadata string
	switch state.NegotiatedProtocol {
	case alpnH2:
	case alpnH2PeerMetadata:
		if c.peerMetadata == "" {
			_ = conn.Close()
			return nil, nil, errNoExchange
		}
		if peerMetadata, err = exchangePeerMetadata(conn, c.peerMetadata, deadlineOf(ctx)); err != nil {
			_ = conn.Close()
			return nil, nil, err
		}
	default:
		_ = conn.Close()
		return nil, nil, fmt.Errorf("server negotiated ALPN protocol %q, want %q", state.NegotiatedProtocol, alpnH2)
	}
	// VerifyPeerCertificate accepted the leaf, so it has a SPIFFE ID.
	id, err := x509svid.IDFromCert(state.PeerCertificates[0])
	if err != nil {
		_ = conn.Close()
		return nil, nil, fmt.Errorf("server certificate: %w", err)
	}
	return conn, AuthInfo{
		CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity},
		State:          &state,
		PeerID:         id,
		PeerMetadata:   peerMetadata,
	}, nil
}

func (c *clientCredentials) tlsConfig(authority string, settings *xdsclient.UpstreamTLS) (*tls.Config, error) {
	roots, err := lookupProvider(c.providers, settings.Roots.Provider, "roots")
	if err != nil {
		return nil, err
	}
	serverName := settings.SNI
	if serverName == "" {
		serverName = c.serverNameOverride
	}
	if serverName == "" {
		serverName = hostOf(authority)
	}
	cfg := &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: []string{alpnH2},
		ServerName: serverName,
		// Hostname checks do not apply to SPIFFE identities; the chain and
		// the SANs are verified in VerifyPeerCertificate instead.
		InsecureSkipVerify: true,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			return verifyServer(raw, roots, settings.SubjectAltNames)
		},
	}
	if settings.Identity != nil {
		ident, err := lookupProvider(c.providers, settings.Identity.Provider, "identity")
		if err != nil {
			return nil, err
		}
		get := certificateFrom(settings.Identity.Provider, ident)
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return get() }
	}
	return cfg, nil
}

func verifyServer(raw [][]byte, roots identity.Source, sans []xdsclient.StringMatcher) error {
	if len(raw) == 0 {
		return errors.New("server presented no certificate")
	}
	id, leaf, err := verifyChain(raw, roots)
	if err != nil {
		return fmt.Errorf("cannot verify server certificate: %w", err)
	}
	if len(sans) > 0 && !matchSANs(leaf, sans) {
		return fmt.Errorf("server identity %s not allowed: want one of %s, certificate has SANs %q", id, describeMatchers(sans), certSANs(leaf))
	}
	return nil
}

func (c *clientCredentials) ServerHandshake(net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("transport: client credentials cannot accept connections; use NewServerCredentials")
}

func (c *clientCredentials) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: securityProtocol, ServerName: c.serverNameOverride}
}

func (c *clientCredentials) Clone() credentials.TransportCredentials {
	clone := *c
	return &clone
}

// OverrideServerName sets the SNI sent when a cluster configures none.
func (c *clientCredentials) OverrideServerName(name string) error {
	c.serverNameOverride = name
	return nil
}

// hostOf strips the port from an authority; it returns authority unchanged
// when there is none.
func hostOf(authority string) string {
	if host, _, err := net.SplitHostPort(authority); err == nil {
		return host
	}
	return authority
}
