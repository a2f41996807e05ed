package transport

import (
	"context"
	"crypto/tls"
	"fmt"
	"net"

	"mesh/internal/handshake"
)

// NewHTTPDialer returns how mesh's net/http RoundTripper reaches an
// endpoint: plaintext when info carries no TLS settings, otherwise mTLS
// exactly as NewClientCredentials does for gRPC (client SVID, server chain
// and SANs checked), offering HTTP/2 and HTTP/1.1 by ALPN.
func NewHTTPDialer(providers Providers, opts ...Option) func(ctx context.Context, network, addr string, info *handshake.Info) (net.Conn, error) {
	logger := newOptions(opts).logger
	c := &clientCredentials{providers: providers, logger: logger, failures: newFailureLog(logger)}
	var dialer net.Dialer
	return func(ctx context.Context, network, addr string, info *handshake.Info) (net.Conn, error) {
		raw, err := dialer.DialContext(ctx, network, addr)
		if err != nil || info == nil || info.TLS == nil {
			return raw, err
		}
		cfg, err := c.tlsConfig(addr, info.TLS)
		if err != nil {
			raw.Close()
			return nil, fmt.Errorf("transport: cluster %s: %w", info.Cluster, err)
		}
		cfg.NextProtos = []string{"h2", "http/1.1"}
		conn := tls.Client(raw, cfg)
		if err := conn.HandshakeContext(ctx); err != nil {
			conn.Close()
			c.failures.handshakeFailed(ctx, info.Cluster, addr, err)
			return nil, fmt.Errorf("transport: cluster %s: tls handshake with %s: %w", info.Cluster, addr, err)
		}
		return conn, nil
	}
}
