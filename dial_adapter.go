package mesh

import (
	"context"
	"net"

	"mesh/balancer"
	"mesh/internal/handshake"
	"mesh/xdsclient"
)

// httpDialer adapts transport's HTTP dialer to balancer.DialTLSFunc.
// Temporary: once transport.NewHTTPDialer takes the cluster and its TLS
// settings itself (branch serve), this file goes and NewRoundTripper takes
// the dialer as is.
func httpDialer(dial func(ctx context.Context, network, addr string, info *handshake.Info) (net.Conn, error)) balancer.DialTLSFunc {
	return func(ctx context.Context, network, addr, cluster string, tls *xdsclient.UpstreamTLS) (net.Conn, error) {
		return dial(ctx, network, addr, &handshake.Info{Cluster: cluster, TLS: tls})
	}
}
