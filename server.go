package mesh

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/peer"

	"mesh/internal/drain"
	"mesh/transport"
	"mesh/xdsclient"
)

// ErrListenerNotFound is the error a serving state callback gets when the
// control plane has no inbound listener resource for a listening address.
var ErrListenerNotFound = errors.New("mesh: inbound listener resource not found")

// GRPCServer is a gRPC server whose transport security comes from the
// control plane (gRFC A36): for each listener it serves, it watches the
// inbound listener resource named by the bootstrap's
// server_listener_resource_name_template and handshakes each connection as
// the matching filter chain says (mTLS with client certificates required
// under STRICT, plaintext under DISABLE). It accepts no connection before
// that resource has arrived, and closes new connections at once while the
// control plane says the resource does not exist (not serving; see
// WithServingStateCallback).
//
// A connection the listener no longer admits as it was handshaken (a
// plaintext one after PERMISSIVE -> STRICT, or any once the resource is
// gone) has its new calls refused, gets GOAWAY and is closed after
// WithDrainPeriod; the others are untouched, and policy changes apply to
// them at once. Headers and concurrent streams are bounded
// (WithMaxHeaderBytes, WithMaxConcurrentStreams).
type GRPCServer struct {
	m       *Mesh
	srv     *grpc.Server
	serving servingSet
}

// NewGRPCServer returns a server secured and traced by the mesh. opts are
// applied after the mesh's own; do not pass grpc.Creds. Add interceptors
// with grpc.ChainUnaryInterceptor and grpc.ChainStreamInterceptor: they then
// run inside the mesh's authorization and telemetry. grpc-go runs the one
// set with grpc.UnaryInterceptor (or StreamInterceptor) before every chained
// interceptor, so it would see calls before they are authorized, and calls
// it ends itself would go unmeasured.
func (m *Mesh) NewGRPCServer(opts ...grpc.ServerOption) *GRPCServer {
	s := &GRPCServer{m: m}
	creds := drainingCredentials{transport.NewServerCredentials(m.certs, chooseTLS, transport.WithLogger(m.logger))}
	authz := transport.NewAuthorizer(transport.WithLogger(m.logger), transport.WithCurrentFilterChain(s.serving.currentChainForRPC))
	base := append([]grpc.ServerOption{
		grpc.Creds(creds),
		grpc.MaxHeaderListSize(uint32(m.limits.maxHeaderBytes)),
		grpc.MaxConcurrentStreams(m.limits.maxConcurrentStreams),
	}, m.serverTelemetry.ServerOptions()...)
	// Authorization after telemetry, so denied calls are still measured.
	base = append(base, authz.ServerOptions()...)
	if age := m.connectionAge(); age > 0 {
		base = append(base, grpc.KeepaliveParams(keepalive.ServerParameters{MaxConnectionAge: age}))
	}
	s.srv = grpc.NewServer(append(base, opts...)...)
	return s
}

// RegisterService implements grpc.ServiceRegistrar.
func (s *GRPCServer) RegisterService(desc *grpc.ServiceDesc, impl any) {
	s.srv.RegisterService(desc, impl)
}

// GetServiceInfo returns the services registered, as grpc.Server does.
func (s *GRPCServer) GetServiceInfo() map[string]grpc.ServiceInfo { return s.srv.GetServiceInfo() }

// Serve serves lis until Stop or GracefulStop. Connections are accepted only
// once the inbound listener resource for lis's address has arrived.
func (s *GRPCServer) Serve(lis net.Listener) error {
	if s.m.isClosed() {
		return ErrClosed
	}
	sl, stop, err := s.m.listen(lis, &s.serving)
	if err != nil {
		return err
	}
	defer stop()
	return s.srv.Serve(sl)
}

// listen starts watching lis's inbound listener resource and adds it to set;
// stop undoes both.
func (m *Mesh) listen(lis net.Listener, set *servingSet) (sl *servingListener, stop func(), err error) {
	name, err := m.serverListenerName(lis.Addr())
	if err != nil {
		lis.Close()
		return nil, nil, fmt.Errorf("mesh: serve: %w", err)
	}
	sl = newServingListener(lis, name, m)
	return sl, set.add(sl), nil
}

// servingSet is the listeners a server serves, readable without a lock.
type servingSet struct {
	mu sync.Mutex // serializes changes
	ls atomic.Pointer[[]*servingListener]
}

// add starts serving sl and returns what stops it.
func (ss *servingSet) add(sl *servingListener) (remove func()) {
	ss.change(func(ls []*servingListener) []*servingListener { return append(ls, sl) })
	return func() {
		ss.change(func(ls []*servingListener) []*servingListener {
			return slices.DeleteFunc(ls, func(l *servingListener) bool { return l == sl })
		})
		sl.stopWatch()
	}
}

func (ss *servingSet) change(f func([]*servingListener) []*servingListener) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	var cur []*servingListener
	if p := ss.ls.Load(); p != nil {
		cur = slices.Clone(*p)
	}
	ss.ls.Store(new(f(cur)))
}

// currentChainForRPC is currentChain for a gRPC call's connection.
func (ss *servingSet) currentChainForRPC(ctx context.Context, chosen *xdsclient.FilterChain) *xdsclient.FilterChain {
	p, ok := peer.FromContext(ctx)
	if !ok || p.LocalAddr == nil {
		return nil
	}
	return ss.currentChain(p.LocalAddr, p.Addr, chosen)
}

// currentChain gives the authorizer the filter chain a connection would get
// from the listener resource now in force, when that resource changed since
// the connection was accepted, so that an AuthorizationPolicy change reaches
// open connections at once. A connection the resource no longer admits as
// it was handshaken (a plaintext one under STRICT, or its listener gone) is
// being drained (see servingListener.drainStale); its new calls are refused
// until it closes. nil keeps the chain chosen at accept time.
func (ss *servingSet) currentChain(local, remote net.Addr, chosen *xdsclient.FilterChain) *xdsclient.FilterChain {
	ls := ss.ls.Load()
	if ls == nil {
		return nil
	}
	port := addrPort(local).Port()
	for _, sl := range *ls {
		if addrPort(sl.Addr()).Port() != port {
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

// protocolOf is the transport protocol a connection served by fc spoke.
func protocolOf(fc *xdsclient.FilterChain) string {
	if fc != nil && fc.TLS != nil {
		return transport.ProtocolTLS
	}
	return transport.ProtocolRawBuffer
}

// sameHandshake reports whether a connection handshaken under chain a is
// still admitted under chain b: same TLS settings, or both plaintext.
// Other differences (RBAC policies) apply to open connections as they are.
func sameHandshake(a, b *xdsclient.FilterChain) bool {
	if a == nil || b == nil {
		return false
	}
	if a.TLS == nil || b.TLS == nil {
		return a.TLS == nil && b.TLS == nil
	}
	x, y := a.TLS, b.TLS
	return x.Identity == y.Identity && x.RequireClientCertificate == y.RequireClientCertificate &&
		(x.Roots == nil) == (y.Roots == nil) && (x.Roots == nil || *x.Roots == *y.Roots)
}

// refusingChain is a chain whose one RBAC filter allows nothing: what the
// authorizer enforces on a connection being drained. Its filter's name
// says why, in the log line of each refusal.
func refusingChain(why string) *xdsclient.FilterChain {
	return &xdsclient.FilterChain{Name: "draining", HTTP: &xdsclient.HTTPConnectionManager{
		HTTPFilters: []xdsclient.HTTPFilter{{
			Name:   "mesh.draining: " + why,
			Config: &xdsclient.RBAC{Rules: &xdsclient.RBACRules{Action: xdsclient.RBACAllow}},
		}},
	}}
}

// Stop stops the server at once, closing every connection.
func (s *GRPCServer) Stop() { s.srv.Stop() }

// GracefulStop stops accepting connections and waits for pending RPCs.
func (s *GRPCServer) GracefulStop() { s.srv.GracefulStop() }

// serverListenerName applies the gRFC A36 template (percent-encoding the
// address when the template is an xdstp:// name, gRFC A47).
func (m *Mesh) serverListenerName(addr net.Addr) (string, error) {
	name := m.bootstrap.ServerListenerName(addr.String())
	if name == "" {
		return "", errors.New("bootstrap has no server_listener_resource_name_template")
	}
	return name, nil
}

// servingListener gates a net.Listener on its inbound listener resource and
// tags every accepted connection with the resource it is to be served by.
type servingListener struct {
	net.Listener
	name   string
	m      *Mesh
	config atomic.Pointer[xdsclient.Listener] // nil: not serving

	stateMu sync.Mutex
	state   servingState // last reported to the mesh's callback

	drainPeriod time.Duration
	connsMu     sync.Mutex
	conns       map[*servingConn]struct{} // open connections, for drainStale

	ready     chan struct{} // closed when the first resource or NotFound arrives
	readyOnce sync.Once
	done      chan struct{} // closed by Close
	closeOnce sync.Once
	cancel    func()
}

func newServingListener(lis net.Listener, name string, m *Mesh) *servingListener {
	sl := &servingListener{Listener: lis, name: name, m: m, ready: make(chan struct{}), done: make(chan struct{}),
		drainPeriod: m.limits.drainPeriod, conns: map[*servingConn]struct{}{}}
	sl.cancel = m.xds.WatchListener(name, sl.onUpdate)
	return sl
}

func (sl *servingListener) onUpdate(ev xdsclient.Event[*xdsclient.Listener]) {
	log := sl.m.logger.With("listener", sl.name, "address", sl.Addr().String())
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

// setServing reports a change of serving state to the mesh's callback,
// once per change, and says whether it was one.
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
	if fn := sl.m.servingState; fn != nil {
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
// exist), then returns connections while the mesh says to serve; others are
// closed at once.
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
		sl.m.logger.Info("draining connection: the filter chain it was accepted under changed",
			"listener", sl.name, "peer", sc.RemoteAddr().String(), "chain", sc.chosen.Load().Name, "drain_period", sl.drainPeriod)
		sc.drain(sl.drainPeriod)
	}
}

func (sl *servingListener) forget(sc *servingConn) {
	sl.connsMu.Lock()
	delete(sl.conns, sc)
	sl.connsMu.Unlock()
}

func (sl *servingListener) Close() error {
	sl.closeOnce.Do(func() { close(sl.done) })
	return sl.Listener.Close()
}

func (sl *servingListener) stopWatch() { sl.cancel() }

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

// drainingCredentials are the server credentials of mesh servers with
// each secured connection made drainable.
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

// servingConnOf unwraps conn down to the servingConn a mesh listener
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

// chooseTLS is the server credentials' per-connection choice of filter
// chain, under the listener resource in force now; transportProtocol is
// what the client's first bytes showed ("tls" or "raw_buffer").
func chooseTLS(conn net.Conn, transportProtocol string) (*xdsclient.FilterChain, error) {
	sc := servingConnOf(conn)
	if sc == nil {
		return nil, errors.New("connection was not accepted by a mesh listener")
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

// selectFilterChain picks the filter chain for a connection the way gRFC A36
// does, with Envoy's transport protocol step added: narrowing the candidates
// by the most specific destination prefix, then transport protocol, then
// source type, then source prefix, then source port, falling back to the
// default filter chain.
func selectFilterChain(l *xdsclient.Listener, local, remote net.Addr, transportProtocol string) *xdsclient.FilterChain {
	dst := addrPort(local)
	src := addrPort(remote)
	// Chosen per RPC: candidates live on the stack, and keepBest filters
	// in place.
	var buf [8]*xdsclient.FilterChain
	cands := buf[:0]
	for i := range l.FilterChains {
		fc := &l.FilterChains[i]
		// gRPC servers listen on one port, so chains matching on a
		// destination port or on an application protocol never match.
		if fc.Match.DestinationPort != 0 || len(fc.Match.ApplicationProtocols) > 0 {
			continue
		}
		cands = append(cands, fc)
	}
	cands = keepBest(cands, func(fc *xdsclient.FilterChain) int { return prefixScore(fc.Match.PrefixRanges, dst.Addr()) })
	cands = keepBest(cands, func(fc *xdsclient.FilterChain) int {
		switch fc.Match.TransportProtocol {
		case "":
			return 0
		case transportProtocol:
			return 1
		}
		return -1
	})
	cands = keepBest(cands, func(fc *xdsclient.FilterChain) int {
		return sourceTypeScore(fc.Match.SourceType, dst.Addr(), src.Addr())
	})
	cands = keepBest(cands, func(fc *xdsclient.FilterChain) int { return prefixScore(fc.Match.SourcePrefixRanges, src.Addr()) })
	cands = keepBest(cands, func(fc *xdsclient.FilterChain) int { return portScore(fc.Match.SourcePorts, src.Port()) })
	if len(cands) > 0 {
		return cands[0]
	}
	return l.DefaultFilterChain
}

// keepBest keeps the candidates with the highest non-negative score.
func keepBest(cands []*xdsclient.FilterChain, score func(*xdsclient.FilterChain) int) []*xdsclient.FilterChain {
	best := -1
	out := cands[:0] // writes never overtake the reads
	for _, fc := range cands {
		switch s := score(fc); {
		case s > best:
			best, out = s, append(out[:0], fc)
		case s == best && s >= 0:
			out = append(out, fc)
		}
	}
	return out
}

// prefixScore is the longest matching prefix length plus one; 0 when the
// chain has no prefixes (matches anything); -1 when none match.
func prefixScore(prefixes []netip.Prefix, ip netip.Addr) int {
	if len(prefixes) == 0 {
		return 0
	}
	best := -1
	for _, p := range prefixes {
		if p.Contains(ip.Unmap()) && p.Bits()+1 > best {
			best = p.Bits() + 1
		}
	}
	return best
}

func sourceTypeScore(t xdsclient.SourceType, dst, src netip.Addr) int {
	local := src.IsLoopback() || src == dst
	switch t {
	case xdsclient.SourceSameIPOrLoopback:
		if local {
			return 1
		}
		return -1
	case xdsclient.SourceExternal:
		if !local {
			return 1
		}
		return -1
	}
	return 0
}

func portScore(ports []uint32, port uint16) int {
	if len(ports) == 0 {
		return 0
	}
	for _, p := range ports {
		if p == uint32(port) {
			return 1
		}
	}
	return -1
}

func addrPort(a net.Addr) netip.AddrPort {
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.AddrPort()
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}

// PeerID returns the SPIFFE ID the caller of an RPC proved with its client
// certificate. ok is false for plaintext or unauthenticated callers.
func PeerID(ctx context.Context) (id spiffeid.ID, ok bool) { return transport.PeerID(ctx) }
