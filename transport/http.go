package transport

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"

	"mesh/xdsclient"
)

// NewHTTPDialer returns how mesh's net/http RoundTripper reaches an
// endpoint of cluster: plaintext when tls is nil, otherwise mTLS exactly as
// NewClientCredentials does for gRPC (client SVID, server chain and SANs
// checked), offering HTTP/2 and HTTP/1.1 by ALPN.
func NewHTTPDialer(providers Providers, opts ...ClientOption) func(ctx context.Context, network, addr, cluster string, tls *xdsclient.UpstreamTLS) (net.Conn, error) {
	c := newClientCredentials(providers, opts)
	var dialer net.Dialer
	return func(ctx context.Context, network, addr, cluster string, settings *xdsclient.UpstreamTLS) (net.Conn, error) {
		raw, err := dialer.DialContext(ctx, network, addr)
		if err != nil || settings == nil {
			return raw, err
		}
		cfg, err := c.tlsConfig(addr, settings)
		if err != nil {
			raw.Close()
			return nil, fmt.Errorf("transport: cluster %s: %w", cluster, err)
		}
		cfg.NextProtos = []string{"h2", "http/1.1"}
		conn := tls.Client(raw, cfg)
		if err := conn.HandshakeContext(ctx); err != nil {
			conn.Close()
			c.failures.handshakeFailed(ctx, cluster, addr, err)
			return nil, fmt.Errorf("transport: cluster %s: tls handshake with %s: %w", cluster, addr, err)
		}
		return conn, nil
	}
}
