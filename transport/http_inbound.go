package transport

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
	"mesh/xdsclient"
)

// HTTPInbound is the connection handling of a net/http server secured by
// the control plane, as GRPCInbound is of a gRPC server: Listen gates a
// listener on its inbound listener resource and hands out connections
// that handshake as the matching filter chain says (mTLS, plaintext, or
// either under PERMISSIVE) on first use; Handler checks each request
// against the chain's RBAC policies (403 when denied) after normalizing
// its path as Envoy would, and gives handlers the peer (PeerID works on
// r.Context()) and r.TLS. Over mTLS it accepts HTTP/2 and HTTP/1.1 (ALPN
// h2, http/1.1 or none).
//
// Connections are drained on listener changes as GRPCInbound's are: an
// HTTP/2 one gets GOAWAY, an HTTP/1 one "Connection: close" with its next
// response.
type HTTPInbound struct {
	inbound
}

// NewHTTPInbound returns the connection handling of one HTTP server, whose
// listeners' resources come from listeners and certificates from
// providers. The server must use ConnContext, Handler and Listen.
func NewHTTPInbound(listeners ListenerWatcher, providers Providers, opts ...HTTPInboundOption) *HTTPInbound {
	o := newOptions(HTTPInboundOption.applyHTTPInbound, opts)
	// HTTP/1.1 over mTLS too (ALPN http/1.1, or none): sidecars speak it.
	o.alpn = []string{"h2", "http/1.1", ""}
	s := &HTTPInbound{}
	s.init(listeners, providers, o, s.currentChainForRequest)
	return s
}

// Listen returns lis accepting connections only once the inbound listener
// resource name has arrived, and none while the control plane says it
// does not exist. Each connection runs its handshake on its first Read or
// Write, in the server's goroutine for it, so a slow client cannot hold
// up Accept. Closing it stops watching name.
func (s *HTTPInbound) Listen(lis net.Listener, name string) net.Listener {
	return &handshakingListener{servingListener: s.listen(lis, name), creds: s.creds}
}

// ConnContext is the http.Server's ConnContext: it keeps the connection
// where Handler finds what its handshake established.
func (s *HTTPInbound) ConnContext(ctx context.Context, c net.Conn) context.Context {
	return context.WithValue(ctx, inboundConnKey{}, c)
}

type inboundConnKey struct{}

// Handler returns h guarded by the connection's filter chain. measure, if
// not nil, wraps the handler that authorizes, so that it sees the peer and
// also the requests refused.
func (s *HTTPInbound) Handler(h http.Handler, measure func(http.Handler) http.Handler) http.Handler {
	h = s.authz.middleware(h)
	if measure != nil {
		h = measure(h)
	}
	return s.withPeer(h)
}

// currentChainForRequest is currentChain for an HTTP request's connection.
func (s *HTTPInbound) currentChainForRequest(ctx context.Context, chosen *xdsclient.FilterChain) *xdsclient.FilterChain {
	c, ok := ctx.Value(inboundConnKey{}).(*handshakingConn)
	if !ok {
		return nil
	}
	return s.currentChain(c.LocalAddr(), c.RemoteAddr(), chosen)
}

// withPeer gives each request what the connection's handshake established:
// r.TLS, the peer (as gRPC handlers see it, so PeerID works) and the filter
// chain the authorizer enforces.
func (s *HTTPInbound) withPeer(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c, ok := r.Context().Value(inboundConnKey{}).(*handshakingConn)
		if !ok || c.err != nil {
			http.Error(w, "connection not secured by the mesh", http.StatusInternalServerError)
			return
		}
		ctx := peer.NewContext(r.Context(), &peer.Peer{Addr: c.RemoteAddr(), LocalAddr: c.LocalAddr(), AuthInfo: c.info})
		ctx = contextWithFilterChain(ctx, c.info.FilterChain)
		r = r.WithContext(ctx)
		r.TLS = c.info.State
		// A connection past its age is closed after this response (a
		// graceful GOAWAY on HTTP/2), so the client reconnects with a new
		// handshake before the certificates it was made with expire.
		if s.maxConnAge > 0 && time.Since(c.accepted) > s.maxConnAge || c.draining() {
			w.Header().Set("Connection", "close")
		}
		next.ServeHTTP(w, r)
	})
}

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
	info AuthInfo
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
			c.err = fmt.Errorf("http handshake with %s: %w", c.raw.RemoteAddr(), err)
			return
		}
		info, ok := ai.(AuthInfo)
		if !ok {
			conn.Close()
			c.err = errors.New("http handshake: unexpected auth info")
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
