package mesh

import (
	"context"
	"net"
	"net/http"

	"mesh/telemetry"
	"mesh/transport"
)

// HTTPServer is a net/http server secured, authorized and measured by the
// mesh like GRPCServer: each connection it serves is handshaken as the
// matching filter chain of its inbound listener resource says (mTLS,
// plaintext, or either under PERMISSIVE, told apart by the first bytes),
// requests are checked against the chain's RBAC policies (403 when
// denied), and handlers learn the caller with PeerID(r.Context()).
// Request paths are normalized before authorization, as Envoy does under
// Istio (see WithPathNormalization), and handlers get the normalized path.
// Connections are drained on listener changes as GRPCServer's are, and
// Envoy-like limits apply (WithMaxHeaderBytes, WithReadHeaderTimeout,
// WithIdleTimeout, WithMaxConcurrentStreams). Over mTLS it speaks HTTP/2
// and HTTP/1.1 (ALPN h2 or http/1.1).
//
// Its Server field is the http.Server underneath, for timeouts and the
// like; do not set its Handler, ConnContext or TLSConfig.
type HTTPServer struct {
	Server  *http.Server
	m       *Mesh
	inbound *transport.HTTPInbound
}

// NewHTTPServer returns a server for h. The mesh terminates TLS itself, so
// serve it with Serve, never ServeTLS. It speaks HTTP/1.1 and HTTP/2 (the
// latter negotiated inside the mesh's TLS, or with prior knowledge).
func (m *Mesh) NewHTTPServer(h http.Handler) *HTTPServer {
	opts := []transport.HTTPInboundOption{transport.WithPathNormalization(m.limits.pathNormalization)}
	for _, o := range m.inboundOptions() {
		opts = append(opts, o)
	}
	s := &HTTPServer{m: m, inbound: transport.NewHTTPInbound(m.xds, m.certs, opts...)}
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	// The http.Server sees the connection after the mesh's TLS, so HTTP/2
	// negotiated by ALPN arrives as HTTP/2 with prior knowledge.
	protocols.SetUnencryptedHTTP2(true)
	s.Server = &http.Server{
		Handler: s.inbound.Handler(h, func(h http.Handler) http.Handler {
			return telemetry.Middleware(h, m.telemetry...)
		}),
		ConnContext: s.inbound.ConnContext,
		Protocols:   &protocols,
		// Envoy-like limits (see limits.go); users may change them here.
		MaxHeaderBytes:    m.limits.maxHeaderBytes,
		ReadHeaderTimeout: m.limits.readHeaderTimeout,
		IdleTimeout:       m.limits.idleTimeout,
		HTTP2: &http.HTTP2Config{
			MaxConcurrentStreams: int(m.limits.maxConcurrentStreams),
		},
	}
	return s
}

// Serve serves lis until Shutdown or Close. Connections are accepted only
// once the inbound listener resource for lis's address has arrived.
func (s *HTTPServer) Serve(lis net.Listener) error {
	if s.m.isClosed() {
		return ErrClosed
	}
	name, err := s.m.serverListenerName(lis)
	if err != nil {
		return err
	}
	sl := s.inbound.Listen(lis, name)
	defer sl.Close()
	return s.Server.Serve(sl)
}

// Shutdown stops the server gracefully, as http.Server.Shutdown does.
func (s *HTTPServer) Shutdown(ctx context.Context) error { return s.Server.Shutdown(ctx) }

// Close stops the server at once, as http.Server.Close does.
func (s *HTTPServer) Close() error { return s.Server.Close() }
