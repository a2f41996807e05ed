package mesh

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"sync"
	"time"

	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"

	"mesh/internal/drain"
	"mesh/telemetry"
	"mesh/transport"
	"mesh/xdsclient"
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
	creds   credentials.TransportCredentials
	serving servingSet
	maxAge  time.Duration // see WithMaxConnectionAge; 0: unbounded
}

// NewHTTPServer returns a server for h. The mesh terminates TLS itself, so
// serve it with Serve, never ServeTLS. It speaks HTTP/1.1 and HTTP/2 (the
// latter negotiated inside the mesh's TLS, or with prior knowledge).
func (m *Mesh) NewHTTPServer(h http.Handler) *HTTPServer {
	// HTTP/1.1 over mTLS too (ALPN http/1.1, or none): sidecars speak it.
	creds := transport.NewServerCredentials(m.certs, chooseTLS, transport.WithLogger(m.logger),
		transport.WithApplicationProtocols("h2", "http/1.1", ""))
	s := &HTTPServer{m: m, creds: creds, maxAge: m.connectionAge()}
	authz := transport.NewAuthorizer(transport.WithLogger(m.logger), transport.WithCurrentFilterChain(s.currentChain),
		transport.WithPathNormalization(m.limits.pathNormalization))
	var protocols http.Protocols
	protocols.SetHTTP1(true)
	// The http.Server sees the connection after the mesh's TLS, so HTTP/2
	// negotiated by ALPN arrives as HTTP/2 with prior knowledge.
	protocols.SetUnencryptedHTTP2(true)
	s.Server = &http.Server{
		Handler:     s.withPeer(telemetry.Middleware(authz.Middleware(h), m.telemetry...)),
		ConnContext: func(ctx context.Context, c net.Conn) context.Context { return context.WithValue(ctx, meshConnKey{}, c) },
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
	sl, stop, err := s.m.listen(lis, &s.serving)
	if err != nil {
		return err
	}
	defer stop()
	return s.Server.Serve(&handshakingListener{servingListener: sl, creds: s.creds})
}

// Shutdown stops the server gracefully, as http.Server.Shutdown does.
func (s *HTTPServer) Shutdown(ctx context.Context) error { return s.Server.Shutdown(ctx) }

// Close stops the server at once, as http.Server.Close does.
func (s *HTTPServer) Close() error { return s.Server.Close() }

func (s *HTTPServer) currentChain(ctx context.Context, chosen *xdsclient.FilterChain) *xdsclient.FilterChain {
	c, ok := ctx.Value(meshConnKey{}).(*handshakingConn)
	if !ok {
		return nil
	}
	return s.serving.currentChain(c.LocalAddr(), c.RemoteAddr(), chosen)
}

// withPeer gives each request what the connection's handshake established:
// r.TLS, the peer (as gRPC handlers see it, so PeerID works) and the filter
// chain the authorizer enforces.
func (s *HTTPServer) withPeer(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, ok := r.Context().Value(meshConnKey{}).(*handshakingConn)
		if !ok || c.err != nil {
			http.Error(w, "connection not secured by the mesh", http.StatusInternalServerError)
			return
		}
		ctx := peer.NewContext(r.Context(), &peer.Peer{Addr: c.RemoteAddr(), LocalAddr: c.LocalAddr(), AuthInfo: c.info})
		ctx = transport.ContextWithFilterChain(ctx, c.info.FilterChain)
		r = r.WithContext(ctx)
		r.TLS = c.info.State
		// A connection past its age is closed after this response (a
		// graceful GOAWAY on HTTP/2), so the client reconnects with a new
		// handshake before the certificates it was made with expire.
		if s.maxAge > 0 && time.Since(c.accepted) > s.maxAge || c.draining() {
			w.Header().Set("Connection", "close")
		}
		next.ServeHTTP(w, r)
	})
}

type meshConnKey struct{}

// handshakingListener hands out connections that perform the mesh's
// handshake on first use, in the connection's own goroutine, so a slow
// client cannot hold up Accept.
type handshakingListener struct {
	*servingListener
	creds credentials.TransportCredentials
}

func (l *handshakingListener) Accept() (net.Conn, error) {
	c, err := l.servingListener.Accept()
	if err != nil {
		return nil, err
	}
	return &handshakingConn{raw: c, creds: l.creds, accepted: time.Now()}, nil
}

// handshakingConn is an accepted connection whose first Read or Write runs
// the server handshake (sniffing, then TLS or plaintext as the filter chain
// says); afterwards it reads and writes the secured connection.
type handshakingConn struct {
	raw      net.Conn
	creds    credentials.TransportCredentials
	accepted time.Time

	deadlineMu   sync.Mutex
	readDeadline time.Time // the last one the http.Server set

	once sync.Once
	conn net.Conn
	info transport.AuthInfo
	err  error
}

func (c *handshakingConn) handshake() error {
	c.once.Do(func() {
		conn, ai, err := c.creds.ServerHandshake(c.raw)
		// The handshake bounded its reads with its own deadline; the
		// http.Server's (ReadHeaderTimeout) is the one to keep.
		c.deadlineMu.Lock()
		c.raw.SetReadDeadline(c.readDeadline)
		c.deadlineMu.Unlock()
		if err != nil {
			c.err = fmt.Errorf("mesh: http handshake with %s: %w", c.raw.RemoteAddr(), err)
			return
		}
		info, ok := ai.(transport.AuthInfo)
		if !ok {
			conn.Close()
			c.err = errors.New("mesh: http handshake: unexpected auth info")
			return
		}
		c.conn, c.info = securedConn(c.raw, conn, drain.Detect), info
	})
	return c.err
}

// draining reports whether the connection is being drained because the
// filter chain it was accepted under changed.
func (c *handshakingConn) draining() bool {
	sc := servingConnOf(c.raw)
	return sc != nil && sc.isDraining()
}

func (c *handshakingConn) Read(p []byte) (int, error) {
	if err := c.handshake(); err != nil {
		return 0, err
	}
	return c.conn.Read(p)
}

func (c *handshakingConn) Write(p []byte) (int, error) {
	if err := c.handshake(); err != nil {
		return 0, err
	}
	return c.conn.Write(p)
}

// Close closes the raw connection, which ends a secured one too; it may run
// while the handshake is under way in the connection's goroutine.
func (c *handshakingConn) Close() error { return c.raw.Close() }

func (c *handshakingConn) LocalAddr() net.Addr  { return c.raw.LocalAddr() }
func (c *handshakingConn) RemoteAddr() net.Addr { return c.raw.RemoteAddr() }
func (c *handshakingConn) SetDeadline(t time.Time) error {
	c.deadlineMu.Lock()
	defer c.deadlineMu.Unlock()
	c.readDeadline = t
	return c.raw.SetDeadline(t)
}

func (c *handshakingConn) SetReadDeadline(t time.Time) error {
	c.deadlineMu.Lock()
	defer c.deadlineMu.Unlock()
	c.readDeadline = t
	return c.raw.SetReadDeadline(t)
}

func (c *handshakingConn) SetWriteDeadline(t time.Time) error { return c.raw.SetWriteDeadline(t) }
