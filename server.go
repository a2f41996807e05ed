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

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/peer"

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
type GRPCServer struct {
	m       *Mesh
	srv     *grpc.Server
	serving servingSet
}

// NewGRPCServer returns a server secured and traced by the mesh. opts are
// applied after the mesh's own; do not pass grpc.Creds.
func (m *Mesh) NewGRPCServer(opts ...grpc.ServerOption) *GRPCServer {
	s := &GRPCServer{m: m}
	creds := transport.NewServerCredentials(m.certs, chooseTLS, transport.WithLogger(m.logger))
	authz := transport.NewAuthorizer(transport.WithLogger(m.logger), transport.WithCurrentFilterChain(s.serving.currentChainForRPC))
	base := append([]grpc.ServerOption{grpc.Creds(creds)}, m.serverTelemetry.ServerOptions()...)
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
// the connection was accepted: servers cannot drain single connections, so
// this is how an AuthorizationPolicy change reaches them. nil keeps the
// chain chosen at accept time.
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
		if cfg == nil || cfg.DefaultFilterChain == chosen {
			return nil
		}
		for i := range cfg.FilterChains {
			if &cfg.FilterChains[i] == chosen {
				return nil // the resource has not changed
			}
		}
		proto := transport.ProtocolRawBuffer
		if chosen != nil && chosen.TLS != nil {
			proto = transport.ProtocolTLS
		}
		return selectFilterChain(cfg, local, remote, proto)
	}
	return nil
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

	ready     chan struct{} // closed when the first resource or NotFound arrives
	readyOnce sync.Once
	done      chan struct{} // closed by Close
	closeOnce sync.Once
	cancel    func()
}

func newServingListener(lis net.Listener, name string, m *Mesh) *servingListener {
	sl := &servingListener{Listener: lis, name: name, m: m, ready: make(chan struct{}), done: make(chan struct{})}
	sl.cancel = m.xds.WatchListener(name, sl.onUpdate)
	return sl
}

func (sl *servingListener) onUpdate(ev xdsclient.Event[*xdsclient.Listener]) {
	log := sl.m.logger.With("listener", sl.name, "address", sl.Addr().String())
	switch {
	case ev.NotFound:
		sl.config.Store(nil)
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
		cfg := sl.config.Load()
		if cfg == nil {
			conn.Close()
			continue
		}
		return &servingConn{Conn: conn, listener: cfg}, nil
	}
}

func (sl *servingListener) Close() error {
	sl.closeOnce.Do(func() { close(sl.done) })
	return sl.Listener.Close()
}

func (sl *servingListener) stopWatch() { sl.cancel() }

// servingConn is an accepted connection with the listener resource that was
// current when it arrived.
type servingConn struct {
	net.Conn
	listener *xdsclient.Listener
}

// chooseTLS is the server credentials' per-connection choice of filter
// chain; transportProtocol is what the client's first bytes showed
// ("tls" or "raw_buffer").
func chooseTLS(conn net.Conn, transportProtocol string) (*xdsclient.FilterChain, error) {
	// The transport wraps the accepted connection (to replay the bytes it
	// sniffed); unwrap down to ours.
	inner := conn
	for range 8 { // bounded: wrappers nest a level or two
		w, ok := inner.(interface{ NetConn() net.Conn })
		if !ok {
			break
		}
		inner = w.NetConn()
	}
	sc, ok := inner.(*servingConn)
	if !ok {
		return nil, errors.New("connection was not accepted by a mesh listener")
	}
	fc := selectFilterChain(sc.listener, conn.LocalAddr(), conn.RemoteAddr(), transportProtocol)
	if fc == nil {
		return nil, fmt.Errorf("listener %q: no filter chain matches %s connection from %s", sc.listener.Name, transportProtocol, conn.RemoteAddr())
	}
	return fc, nil
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
