package transport

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/peer"

	"mesh/internal/drain"
	"mesh/xdsclient"
)

// ErrListenerNotFound is wrapped by the error a serving state callback
// gets when the control plane has no inbound listener resource for a
// listening address.
var ErrListenerNotFound = errors.New("inbound listener resource not found")

// ListenerWatcher watches inbound listener resources by name, as
// *xdsclient.Client does: fn gets the resource, its absence (NotFound) or
// a rejected update (Err), until cancel.
type ListenerWatcher interface {
	WatchListener(name string, fn func(xdsclient.Event[*xdsclient.Listener])) (cancel func())
}

// GRPCInbound is the connection handling of a gRPC server secured by the
// control plane (gRFC A36): Listen gates a listener on its inbound
// listener resource, and ServerOptions gives the grpc.Server credentials
// that handshake each connection as the matching filter chain says (mTLS
// with client certificates required under STRICT, plaintext under
// DISABLE, either under PERMISSIVE, told apart by the first bytes) and
// interceptors that enforce the chain's RBAC policies.
//
// A connection the listener no longer admits as it was handshaken (a
// plaintext one after PERMISSIVE -> STRICT, or any once the resource is
// gone) has its new calls refused, gets GOAWAY and is closed after
// WithDrainPeriod; on the others, policy changes apply at once.
type GRPCInbound struct {
	inbound
}

// NewGRPCInbound returns the connection handling of one gRPC server, whose
// listeners' resources come from listeners and certificates from
// providers.
func NewGRPCInbound(listeners ListenerWatcher, providers Providers, opts ...GRPCInboundOption) *GRPCInbound {
	s := &GRPCInbound{}
	s.init(listeners, providers, newOptions(GRPCInboundOption.applyGRPCInbound, opts), s.currentChainForRPC)
	s.creds = drainingCredentials{s.creds}
	return s
}

// Listen returns lis accepting connections only once the inbound listener
// resource name has arrived, and none while the control plane says it
// does not exist. Serve it with a grpc.Server made with ServerOptions.
// Closing it stops watching name.
func (s *GRPCInbound) Listen(lis net.Listener, name string) net.Listener {
	return s.listen(lis, name)
}

// ServerOptions returns the credentials and the authorization interceptors
// (chained after any given before them, so that telemetry sees denied
// calls) and, with WithMaxConnectionAge, the keepalive parameters.
func (s *GRPCInbound) ServerOptions() []grpc.ServerOption {
	return append(s.ConnectionOptions(), s.authz.ServerOptions()...)
}

// ConnectionOptions returns what ServerOptions does but the authorization
// interceptors: for a caller that calls UnaryServerInterceptor and
// StreamServerInterceptor from an interceptor of its own, sparing the
// closure grpc-go builds per call to chain interceptors.
func (s *GRPCInbound) ConnectionOptions() []grpc.ServerOption {
	opts := []grpc.ServerOption{grpc.Creds(s.creds)}
	if age := s.maxConnAge; age > 0 {
		opts = append(opts, grpc.KeepaliveParams(keepalive.ServerParameters{MaxConnectionAge: age}))
	}
	return opts
}

// UnaryServerInterceptor returns the interceptor that enforces the
// connection's RBAC policies on unary calls.
func (s *GRPCInbound) UnaryServerInterceptor() grpc.UnaryServerInterceptor {
	return s.authz.UnaryServerInterceptor()
}

// StreamServerInterceptor returns the interceptor that enforces the
// connection's RBAC policies on streams.
func (s *GRPCInbound) StreamServerInterceptor() grpc.StreamServerInterceptor {
	return s.authz.StreamServerInterceptor()
}

// inbound is the listeners one server serves, readable without a lock,
// how their connections choose filter chains and are drained, and what
// handshakes and authorizes them.
type inbound struct {
	watcher      ListenerWatcher
	logger       *slog.Logger
	drainPeriod  time.Duration
	maxConnAge   time.Duration
	servingState func(addr net.Addr, serving bool, err error)
	creds        credentials.TransportCredentials
	authz        *Authorizer

	mu sync.Mutex // serializes changes
	ls atomic.Pointer[[]*servingListener]
}

// init sets in up; current finds the connection of a call for the
// authorizer (see currentChain).
func (in *inbound) init(w ListenerWatcher, providers Providers, o options, current func(context.Context, *xdsclient.FilterChain) *xdsclient.FilterChain) {
	in.watcher, in.logger, in.drainPeriod, in.maxConnAge, in.servingState = w, o.logger, o.drainPeriod, o.maxConnAge, o.servingState
	in.creds = newServerCredentials(providers, in.chooseTLS, o)
	o.currentChain = current
	in.authz = newAuthorizer(o)
}

// listen starts watching lis's inbound listener resource and serving it;
// the listener's Close undoes both.
func (in *inbound) listen(lis net.Listener, name string) *servingListener {
	sl := &servingListener{Listener: lis, name: name, in: in, ready: make(chan struct{}), done: make(chan struct{}),
		conns: map[*servingConn]struct{}{}}
	in.change(func(ls []*servingListener) []*servingListener { return append(ls, sl) })
	sl.cancel = in.watcher.WatchListener(name, sl.onUpdate)
	return sl
}

func (in *inbound) remove(sl *servingListener) {
	in.change(func(ls []*servingListener) []*servingListener {
		return slices.DeleteFunc(ls, func(l *servingListener) bool { return l == sl })
	})
}

func (in *inbound) change(f func([]*servingListener) []*servingListener) {
	in.mu.Lock()
	defer in.mu.Unlock()
	var cur []*servingListener
	if p := in.ls.Load(); p != nil {
		cur = slices.Clone(*p)
	}
	in.ls.Store(new(f(cur)))
}

// currentChainForRPC is currentChain for a gRPC call's connection.
func (in *inbound) currentChainForRPC(ctx context.Context, chosen *xdsclient.FilterChain) *xdsclient.FilterChain {
	p, ok := peer.FromContext(ctx)
	if !ok || p.LocalAddr == nil {
		return nil
	}
	return in.currentChain(p.LocalAddr, p.Addr, chosen)
}

// currentChain gives the authorizer the filter chain a connection would get
// from the listener resource now in force, when that resource changed since
// the connection was accepted, so that an AuthorizationPolicy change reaches
// open connections at once. A connection the resource no longer admits as
// it was handshaken (a plaintext one under STRICT, or its listener gone) is
// being drained (see servingListener.drainStale); its new calls are refused
// until it closes. nil keeps the chain chosen at accept time.
func (in *inbound) currentChain(local, remote net.Addr, chosen *xdsclient.FilterChain) *xdsclient.FilterChain {
	ls := in.ls.Load()
	if ls == nil {
		return nil
	}
	port := addrPortOf(local).Port()
	for _, sl := range *ls {
		if addrPortOf(sl.Addr()).Port() != port {
			continue
		}
		cfg := sl.config.Load()
		if cfg == nil {
			return refusingChain("listener resource removed")
		}
		if cfg.DefaultFilterChain == chosen {
			return nil
		}
		for i := range cfg.FilterChains {
			if &cfg.FilterChains[i] == chosen {
				return nil // the resource has not changed
			}
		}
		fc := selectFilterChain(cfg, local, remote, protocolOf(chosen))
		if !sameHandshake(chosen, fc) {
			return refusingChain("filter chain changed")
		}
		return fc
	}
	return nil
}

// chooseTLS is the server credentials' per-connection choice of filter
// chain, under the listener resource in force now; transportProtocol is
// what the client's first bytes showed ("tls" or "raw_buffer").
func (in *inbound) chooseTLS(conn net.Conn, transportProtocol string) (*xdsclient.FilterChain, error) {
	sc := servingConnOf(conn)
	if sc == nil || sc.sl.in != in {
		return nil, errors.New("connection was not accepted by this server's listener")
	}
	for attempt := 0; ; attempt++ {
		cfg := sc.sl.config.Load()
		if cfg == nil {
			return nil, fmt.Errorf("listener %q: not serving", sc.sl.name)
		}
		fc := selectFilterChain(cfg, conn.LocalAddr(), conn.RemoteAddr(), transportProtocol)
		if fc == nil {
			return nil, fmt.Errorf("listener %q: no filter chain matches %s connection from %s", cfg.Name, transportProtocol, conn.RemoteAddr())
		}
		sc.chosen.Store(fc)
		// A resource stored meanwhile may not have seen this choice in
		// drainStale: choose again under it.
		if sc.sl.config.Load() == cfg || attempt == 8 {
			return fc, nil
		}
	}
}

// servingListener gates a net.Listener on its inbound listener resource and
// tags every accepted connection with the resource it is to be served by.
type servingListener struct {
	net.Listener
	name   string
	in     *inbound
	config atomic.Pointer[xdsclient.Listener] // nil: not serving

	stateMu sync.Mutex
	state   servingState // last reported to the serving state callback

	connsMu sync.Mutex
	conns   map[*servingConn]struct{} // open connections, for drainStale

	ready     chan struct{} // closed when the first resource or NotFound arrives
	readyOnce sync.Once
	done      chan struct{} // closed by Close
	closeOnce sync.Once
	cancel    func()
}

func (sl *servingListener) onUpdate(ev xdsclient.Event[*xdsclient.Listener]) {
	log := sl.in.logger.With("listener", sl.name, "address", sl.Addr().String())
	switch {
	case ev.NotFound:
		sl.config.Store(nil)
		sl.drainStale(nil)
		if sl.setServing(false, fmt.Errorf("inbound listener %q: %w", sl.name, ErrListenerNotFound)) {
			log.Warn("not serving: the control plane has no inbound listener resource for this address; new connections are closed")
		}
		// Not serving is a decided state: accept and close connections
		// rather than leave them waiting in the backlog.
		sl.readyOnce.Do(func() { close(sl.ready) })
	case ev.Err != nil:
		if sl.config.Load() != nil {
			log.Warn("inbound listener update rejected; serving with the last good one", "error", ev.Err)
			return
		}
		log.Warn("not serving: the first inbound listener resource was rejected", "error", ev.Err)
		sl.setServing(false, fmt.Errorf("inbound listener %q: %w", sl.name, ev.Err))
	case !ev.Resource.IsServer():
		log.Error("resource is a client listener, not an inbound one; not serving")
		if sl.config.Load() == nil {
			sl.setServing(false, fmt.Errorf("inbound listener %q: resource is a client listener (it has an api_listener)", sl.name))
		}
	default:
		sl.config.Store(ev.Resource)
		sl.drainStale(ev.Resource)
		if sl.setServing(true, nil) {
			log.Info("serving: inbound listener resource arrived")
		}
		sl.readyOnce.Do(func() { close(sl.ready) })
	}
}

// setServing reports a change of serving state to the callback, once per
// change, and says whether it was one.
func (sl *servingListener) setServing(serving bool, err error) (changed bool) {
	sl.stateMu.Lock()
	defer sl.stateMu.Unlock()
	state := servingStateNotServing
	if serving {
		state = servingStateServing
	}
	if sl.state == state {
		return false
	}
	sl.state = state
	if fn := sl.in.servingState; fn != nil {
		fn(sl.Addr(), serving, err)
	}
	return true
}

type servingState int

const (
	servingStateUnknown servingState = iota // before the first resource or error
	servingStateServing
	servingStateNotServing
)

// Accept waits for the inbound listener resource (or word that it does not
// exist), then returns connections while the control plane says to serve;
// others are closed at once.
func (sl *servingListener) Accept() (net.Conn, error) {
	select {
	case <-sl.ready:
	case <-sl.done:
		return nil, net.ErrClosed
	}
	for {
		conn, err := sl.Listener.Accept()
		if err != nil {
			return nil, err
		}
		if sl.config.Load() == nil {
			conn.Close()
			continue
		}
		sc := &servingConn{Conn: conn, sl: sl}
		sl.connsMu.Lock()
		sl.conns[sc] = struct{}{}
		sl.connsMu.Unlock()
		return sc, nil
	}
}

// drainStale drains the open connections that cfg (nil: no resource) no
// longer admits as they were handshaken: gRFC A36's graceful close, so a
// PERMISSIVE to STRICT change does not leave plaintext connections served
// until they age out. Connections still matching are untouched.
func (sl *servingListener) drainStale(cfg *xdsclient.Listener) {
	sl.connsMu.Lock()
	var stale []*servingConn
	for sc := range sl.conns {
		chosen := sc.chosen.Load()
		if chosen == nil {
			continue // not handshaken yet: it will choose under cfg
		}
		var fc *xdsclient.FilterChain
		if cfg != nil {
			fc = selectFilterChain(cfg, sc.LocalAddr(), sc.RemoteAddr(), protocolOf(chosen))
		}
		if !sameHandshake(chosen, fc) {
			stale = append(stale, sc)
		}
	}
	sl.connsMu.Unlock()
	for _, sc := range stale {
		sl.in.logger.Info("draining connection: the filter chain it was accepted under changed",
			"listener", sl.name, "peer", sc.RemoteAddr().String(), "chain", sc.chosen.Load().Name, "drain_period", sl.in.drainPeriod)
		sc.drain(sl.in.drainPeriod)
	}
}

func (sl *servingListener) forget(sc *servingConn) {
	sl.connsMu.Lock()
	delete(sl.conns, sc)
	sl.connsMu.Unlock()
}

// Close stops accepting and watching; open connections are left to their
// server.
func (sl *servingListener) Close() error {
	sl.closeOnce.Do(func() {
		close(sl.done)
		sl.in.remove(sl)
		sl.cancel()
	})
	return sl.Listener.Close()
}

// servingConn is an accepted connection of a servingListener, with the
// filter chain its handshake chose.
type servingConn struct {
	net.Conn
	sl     *servingListener
	chosen atomic.Pointer[xdsclient.FilterChain]

	mu       sync.Mutex
	secured  *drain.Conn // the HTTP/2 side, once handshaken
	draining bool
	timer    *time.Timer
	closed   bool
}

// setSecured records the connection the HTTP/2 server reads and writes,
// and sends it GOAWAY if a drain began during the handshake.
func (sc *servingConn) setSecured(c *drain.Conn) {
	sc.mu.Lock()
	sc.secured = c
	draining := sc.draining
	sc.mu.Unlock()
	if draining {
		go c.GoAway()
	}
}

// drain sends GOAWAY (HTTP/2; HTTP/1 connections are told "Connection:
// close" with their next response) and closes the connection after period.
func (sc *servingConn) drain(period time.Duration) {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	if sc.draining || sc.closed {
		return
	}
	sc.draining = true
	if sc.secured != nil {
		// Off the xDS callback: GoAway waits for a write of the server's.
		go sc.secured.GoAway()
	}
	sc.timer = time.AfterFunc(period, func() { sc.Close() })
}

func (sc *servingConn) isDraining() bool {
	sc.mu.Lock()
	defer sc.mu.Unlock()
	return sc.draining
}

func (sc *servingConn) Close() error {
	sc.mu.Lock()
	sc.closed = true
	if sc.timer != nil {
		sc.timer.Stop()
	}
	sc.mu.Unlock()
	sc.sl.forget(sc)
	return sc.Conn.Close()
}

// drainingCredentials are server credentials with each secured connection
// made drainable.
type drainingCredentials struct {
	credentials.TransportCredentials
}

func (d drainingCredentials) ServerHandshake(raw net.Conn) (net.Conn, credentials.AuthInfo, error) {
	conn, ai, err := d.TransportCredentials.ServerHandshake(raw)
	if err != nil {
		return nil, nil, err
	}
	return securedConn(raw, conn, drain.HTTP2), ai, nil
}

func (d drainingCredentials) Clone() credentials.TransportCredentials {
	return drainingCredentials{d.TransportCredentials.Clone()}
}

// securedConn wraps conn, the secured side of raw, for draining.
func securedConn(raw, conn net.Conn, p drain.Protocol) net.Conn {
	dc := drain.NewConn(conn, p)
	if sc := servingConnOf(raw); sc != nil {
		sc.setSecured(dc)
	}
	return dc
}

// servingConnOf unwraps conn down to the servingConn a servingListener
// accepted.
func servingConnOf(conn net.Conn) *servingConn {
	for range 8 { // bounded: wrappers nest a level or two
		if sc, ok := conn.(*servingConn); ok {
			return sc
		}
		w, ok := conn.(interface{ NetConn() net.Conn })
		if !ok {
			return nil
		}
		conn = w.NetConn()
	}
	return nil
}
