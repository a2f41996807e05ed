package transport

import (
	"context"
	"crypto/tls"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	"mesh/identity"
	"mesh/xdsclient"
)

// Providers looks up certificate provider instances by the name the xDS
// resources use (a bootstrap certificate_providers key, gRFC A29), such as
// istio's "default".
type Providers interface {
	Provider(name string) (identity.Source, bool)
}

// ProviderMap is a fixed set of providers by name.
type ProviderMap map[string]identity.Source

// Provider returns the source registered under name.
func (m ProviderMap) Provider(name string) (identity.Source, bool) {
	src, ok := m[name]
	return src, ok && src != nil
}

// What AuthInfo.AuthType reports.
const (
	authTypeMTLS      = "mesh-mtls"
	authTypePlaintext = "mesh-plaintext"
)

// AuthInfo describes the security of one connection; gRPC exposes it as
// peer.Peer.AuthInfo.
type AuthInfo struct {
	credentials.CommonAuthInfo
	// State is the TLS connection state; nil for plaintext.
	State *tls.ConnectionState
	// PeerID is the verified SPIFFE ID of the other side; zero for
	// plaintext and for TLS clients that presented no certificate.
	PeerID spiffeid.ID
	// FilterChain is the server listener's filter chain the connection is
	// served by (server side only; nil on clients). Its HTTP filters carry
	// the RBAC policies the Authorizer enforces.
	FilterChain *xdsclient.FilterChain
	// PeerMetadata is the other side's Istio peer metadata (an
	// x-envoy-peer-metadata value), when both sides exchanged it once for
	// the connection (WithPeerMetadata); "" when they did not, and then
	// calls carry it in their headers. It is the peer's claim, not proven
	// by its certificate.
	PeerMetadata string
}

// AuthType returns "mesh-mtls" for TLS connections (even when the client
// sent no certificate) and "mesh-plaintext" otherwise.
func (a AuthInfo) AuthType() string {
	if a.State != nil {
		return authTypeMTLS
	}
	return authTypePlaintext
}

func plaintextAuthInfo() AuthInfo {
	return AuthInfo{CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.NoSecurity}}
}

// PeerID returns the verified SPIFFE ID of the peer of the RPC in ctx: the
// client in a server handler, or the server after a client call made with
// grpc.Peer. It reports false when there is none.
func PeerID(ctx context.Context) (spiffeid.ID, bool) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return spiffeid.ID{}, false
	}
	var id spiffeid.ID
	switch ai := p.AuthInfo.(type) {
	case AuthInfo:
		id = ai.PeerID
	case *AuthInfo:
		if ai != nil {
			id = ai.PeerID
		}
	}
	return id, !id.IsZero()
}

// alpnH2 is the only application protocol gRPC speaks; grpc-go refuses TLS
// connections that did not negotiate it.
const alpnH2 = "h2"

// securityProtocol is what Info reports, as gRPC's own xDS credentials do.
const securityProtocol = "tls"
