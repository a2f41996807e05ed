package balancer

import (
	"fmt"
	"log/slog"
	"math/rand/v2"
	"sync"
	"sync/atomic"

	grpcbalancer "google.golang.org/grpc/balancer"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/connectivity"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/status"

	"mesh/internal/handshake"
	"mesh/internal/routeinfo"
	"mesh/xdsclient"
)

// PolicyName is the name of the LB policy the resolver's service config
// selects. It is the only thing this package registers globally.
const PolicyName = "mesh_router"

func init() { grpcbalancer.Register(policyBuilder{}) }

type policyBuilder struct{}

func (policyBuilder) Name() string { return PolicyName }

func (policyBuilder) Build(cc grpcbalancer.ClientConn, _ grpcbalancer.BuildOptions) grpcbalancer.Balancer {
	b := &routerBalancer{cc: cc, picker: &picker{}}
	// Hashed by ring_hash routes with a channel ID hash policy.
	b.pub = newPublisher[*subConn, grpcPick](b, newConfig[Option](nil), slog.New(slog.DiscardHandler), rand.Uint64())
	b.picker.table.Store(&grpcTable{err: grpcbalancer.ErrNoSubConnAvailable})
	return b
}

// routerBalancer is the LB policy of one channel: the gRPC front-end of the
// routing core. Its publisher owns a SubConn per (cluster, endpoint address,
// TLS settings) and publishes routing tables to its picker. gRPC calls its
// Balancer methods and SubConn listeners one at a time; the publisher's
// timers run on their own goroutines. The picker never takes a lock.
type routerBalancer struct {
	cc     grpcbalancer.ClientConn
	picker *picker
	pub    *publisher[*subConn, grpcPick]
	// notifyMu orders UpdateState calls; never held with the publisher's.
	notifyMu sync.Mutex

	// Guarded by the publisher's lock.
	state connectivity.State
	dirty bool // picker or state changed since the last UpdateState
	// channels is the registry this policy is listed in, under
	// channelName, for ResolverBuilder.ClusterStates.
	channels    *channelRegistry
	channelName string
	// link is where the channel's interceptors read the tables; nil
	// without them.
	link *channelLink
}

// grpcTable is the gRPC front-end's routing table.
type grpcTable = routeTable[grpcPick]

// grpcPick is what a pick of one SubConn returns; made once per table so
// that picks do not allocate.
type grpcPick struct {
	sc   grpcbalancer.SubConn
	done func(grpcbalancer.DoneInfo)
	// route is what telemetry reports for RPCs sent on the SubConn.
	route *routeinfo.Info
}

type subConn struct {
	k       scKey
	sc      grpcbalancer.SubConn
	state   connectivity.State
	lastErr error
	// failedSinceReady: see connState.
	failedSinceReady bool
	// active counts RPCs in flight on the SubConn (least_request).
	active atomic.Int64
	// done ends an RPC picked for doneFor; made once per cluster state so
	// that picks do not allocate.
	done      func(grpcbalancer.DoneInfo)
	doneFor   *clusterState
	doneStats *endpointStats
	route     *routeinfo.Info
}

func (s *subConn) key() scKey { return s.k }

func (s *subConn) routingState() connState {
	return connState{state: s.state, failedSinceReady: s.failedSinceReady, lastErr: s.lastErr}
}

func (s *subConn) health() connectivity.State { return s.state }

func (s *subConn) inFlight() *atomic.Int64 { return &s.active }

func (s *subConn) pickable(cs *clusterState, st *endpointStats) grpcPick {
	if s.done == nil || s.doneFor != cs || s.doneStats != st {
		s.doneFor, s.doneStats = cs, st
		s.done = func(di grpcbalancer.DoneInfo) {
			s.active.Add(-1)
			cs.release()
			st.record(di.Err == nil)
		}
	}
	if s.route == nil {
		s.route = routeinfo.New(s.k.cluster, s.k.addr)
	}
	return grpcPick{sc: s.sc, done: s.done, route: s.route}
}

// picker serves the current table; publishing a table is one atomic store.
type picker struct {
	table atomic.Pointer[grpcTable]
}

// Pick picks an endpoint of the cluster the call's interceptor decided on
// (decision.go); a call on a channel without the interceptors (a plain
// grpc.WithResolvers) is routed here instead, once.
func (p *picker) Pick(info grpcbalancer.PickInfo) (grpcbalancer.PickResult, error) {
	t := p.table.Load()
	if t.err != nil {
		return grpcbalancer.PickResult{}, t.err
	}
	var c *routeCluster[grpcPick]
	var route *xdsclient.Route
	var headers Headers
	d := decisionFrom(info.Ctx)
	ok := false
	if d != nil {
		c, ok = d.clusterOf(t)
		route, headers = d.route, d.headers
	}
	if !ok {
		if t.router.needsHeaders && info.Ctx != nil {
			md, _ := metadata.FromOutgoingContext(info.Ctx)
			headers = MetadataHeaders(md)
		}
		idx, r, err := t.router.pick(info.FullMethodName, headers)
		if err != nil {
			return grpcbalancer.PickResult{}, status.Error(codes.Unavailable, err.Error())
		}
		c, route = &t.clusters[idx], r
	}
	if n := uint32(len(c.ready)); n > 0 {
		cs := c.state
		if !cs.acquire() {
			return grpcbalancer.PickResult{}, cs.overLimitStatus
		}
		var hash uint64
		var hashed bool
		if c.chooser.policy == xdsclient.LBRingHash {
			hash, hashed = requestHash(route.Action.HashPolicies, headers, nil, t.channelID)
		}
		i := c.chooser.choose(int(n), &cs.next, hash, hashed)
		c.chooser.active[i].Add(1)
		r := &c.ready[i]
		routeinfo.Set(info.Ctx, r.route)
		return grpcbalancer.PickResult{SubConn: r.sc, Done: r.done}, nil
	}
	if c.connecting {
		return grpcbalancer.PickResult{}, grpcbalancer.ErrNoSubConnAvailable
	}
	return grpcbalancer.PickResult{}, c.failErr
}

func (b *routerBalancer) UpdateClientConnState(s grpcbalancer.ClientConnState) error {
	snap := snapshotFrom(s.ResolverState)
	if snap == nil {
		return fmt.Errorf("%s: resolver state carries no mesh snapshot (use the mesh resolver): %w", PolicyName, grpcbalancer.ErrBadResolverState)
	}
	b.pub.mu.Lock()
	b.channelName = snap.channel
	b.link = snap.link
	if b.channels != snap.channels {
		if b.channels != nil {
			b.channels.remove(b)
		}
		b.channels = snap.channels
		if b.channels != nil {
			b.channels.add(b)
		}
	}
	b.pub.mu.Unlock()
	b.pub.update(snap, snap.cfg.logger.With("lb_policy", PolicyName))
	return nil
}

// ResolverError fails every RPC when a needed resource no longer exists, or
// when no snapshot was ever good; other errors keep the current table.
func (b *routerBalancer) ResolverError(err error) { b.pub.fail(err) }

// UpdateSubConnState is never called: every SubConn has a StateListener.
func (b *routerBalancer) UpdateSubConnState(sc grpcbalancer.SubConn, s grpcbalancer.SubConnState) {
	b.pub.logger.Error("unexpected UpdateSubConnState", "subconn", sc, "state", s.ConnectivityState)
}

// ExitIdle reconnects idle SubConns.
func (b *routerBalancer) ExitIdle() {
	b.pub.forEachConn(func(s *subConn) {
		if s.state == connectivity.Idle {
			s.sc.Connect()
		}
	})
}

// Close shuts every SubConn down and waits for the balancer's timers.
func (b *routerBalancer) Close() {
	b.pub.mu.Lock()
	if b.channels != nil {
		b.channels.remove(b)
	}
	b.pub.mu.Unlock()
	b.pub.close(nil)
}

func (b *routerBalancer) clusterStates() []ClusterState {
	b.pub.mu.Lock()
	name := b.channelName
	b.pub.mu.Unlock()
	return b.pub.clusterStates(name)
}

// newConn, connect, closeConn, busy, setTable and notify make
// routerBalancer the publisher's front-end.

func (b *routerBalancer) newConn(k scKey) (*subConn, error) {
	addr := handshake.Set(resolver.Address{Addr: k.addr}, &handshake.Info{Cluster: k.cluster, TLS: k.tls})
	s := &subConn{k: k, state: connectivity.Idle}
	sc, err := b.cc.NewSubConn([]resolver.Address{addr}, grpcbalancer.NewSubConnOptions{
		StateListener: func(st grpcbalancer.SubConnState) { b.onSubConnState(s, st) },
	})
	if err != nil {
		return nil, err
	}
	s.sc = sc
	return s, nil
}

func (b *routerBalancer) connect(s *subConn) { s.sc.Connect() }

func (b *routerBalancer) closeConn(s *subConn) { s.sc.Shutdown() }

// busy is false: gRPC lets RPCs on a SubConn that shuts down finish.
func (b *routerBalancer) busy(*subConn) bool { return false }

func (b *routerBalancer) setTable(t *grpcTable, state connectivity.State) {
	b.picker.table.Store(t)
	b.link.store(t)
	if state != connectivity.Shutdown {
		b.state = state
	}
	b.dirty = true
}

func (b *routerBalancer) onSubConnState(s *subConn, st grpcbalancer.SubConnState) {
	if st.ConnectivityState == connectivity.Shutdown {
		return
	}
	b.pub.connChanged(s, func() {
		s.state = st.ConnectivityState
		switch s.state {
		case connectivity.Ready:
			s.failedSinceReady = false
		case connectivity.TransientFailure:
			s.lastErr = st.ConnectionError
			s.failedSinceReady = true
		case connectivity.Idle:
			// The connection went away; reconnect at once so that the
			// cluster stays ready for flips.
			s.sc.Connect()
		}
	})
}

// notify hands gRPC the picker (whose table may have changed) and the
// aggregate state, outside the publisher's lock: gRPC may hold its own
// locks while waiting for this balancer.
func (b *routerBalancer) notify() {
	b.notifyMu.Lock()
	defer b.notifyMu.Unlock()
	b.pub.mu.Lock()
	dirty, state, closed := b.dirty, b.state, b.pub.closed
	b.dirty = false
	b.pub.mu.Unlock()
	if !dirty || closed {
		return
	}
	b.cc.UpdateState(grpcbalancer.State{ConnectivityState: state, Picker: b.picker})
}
