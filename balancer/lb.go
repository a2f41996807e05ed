package balancer

import (
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"time"

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
	b := &routerBalancer{
		cc:       cc,
		logger:   slog.New(slog.DiscardHandler),
		picker:   &picker{},
		subConns: map[scKey]*subConn{},
		tls:      map[string]*xdsclient.UpstreamTLS{},
		counters: map[string]*clusterState{},
		outliers: map[string]*outlierDetector{},
		clock:    systemClock{},
		// Hashed by ring_hash routes with a channel ID hash policy.
		channelID: rand.Uint64(),
	}
	b.picker.table.Store(&table{err: grpcbalancer.ErrNoSubConnAvailable})
	return b
}

// routerBalancer is the LB policy of one channel. It owns a SubConn per
// (cluster, endpoint address, TLS settings) and publishes routing tables to
// its picker. gRPC calls its Balancer methods and SubConn listeners one at a
// time; timers (publish timeout, drain grace) run on their own goroutines,
// so mu guards the state. The picker never takes mu.
type routerBalancer struct {
	cc     grpcbalancer.ClientConn
	picker *picker
	// notifyMu orders UpdateState calls; never held with mu.
	notifyMu sync.Mutex
	timers   sync.WaitGroup

	mu             sync.Mutex
	closed         bool
	logger         *slog.Logger
	publishTimeout time.Duration
	drainGrace     time.Duration
	retryBudget    retryBudget
	subConns       map[scKey]*subConn
	// tls is each cluster's TLS settings as SubConns use them: a new Cluster
	// with equal settings keeps the old pointer, so its SubConns are kept.
	tls      map[string]*xdsclient.UpstreamTLS
	counters map[string]*clusterState
	// outliers are the outlier detectors of clusters that have one.
	outliers  map[string]*outlierDetector
	clock     Clock
	channelID uint64
	// channels is the registry this policy is listed in, under
	// channelName, for ResolverBuilder.ClusterStates.
	channels    *channelRegistry
	channelName string
	// published is the plan the picker serves; nil before the first one and
	// after the resources went away.
	published    *plan
	pending      *plan
	pendingTimer *time.Timer
	state        connectivity.State
	dirty        bool // picker or state changed since the last UpdateState
}

// scKey identifies a SubConn. TLS is part of it so that a change of a
// cluster's TLS settings brings new SubConns while the old ones drain.
type scKey struct {
	cluster string
	addr    string
	tls     *xdsclient.UpstreamTLS
}

type subConn struct {
	key     scKey
	sc      grpcbalancer.SubConn
	state   connectivity.State
	lastErr error
	// failedSinceReady keeps a SubConn that failed counted as failed while
	// it reconnects, so priority failover does not flap (gRPC's sticky
	// TRANSIENT_FAILURE).
	failedSinceReady bool
	drain            *time.Timer
	// active counts RPCs in flight on the SubConn (least_request).
	active atomic.Int64
	// done ends an RPC picked for doneFor; made once per cluster state so
	// that picks do not allocate.
	done      func(grpcbalancer.DoneInfo)
	doneFor   *clusterState
	doneStats *endpointStats
	// route is what telemetry reports for RPCs sent on the SubConn; made
	// once, so that picks do not allocate.
	route *routeinfo.Info
}

// plan is a snapshot resolved into SubConn keys.
type plan struct {
	router   *Router
	clusters []planCluster // indexed like router.clusters
}

type planCluster struct {
	name string
	// carriesTraffic is set when some route gives the cluster weight > 0.
	carriesTraffic bool
	missing        error
	keys           []scKey
	// endpoints[i] is keys[i]'s priority and weight; keys are ordered by
	// priority.
	endpoints []weightedAddr
	// maxRequests is the circuit breaker limit; 0 for a missing cluster.
	maxRequests uint32
	lb          lbConfig
	outlier     *xdsclient.OutlierDetection
}

// table is what one Pick needs; immutable once published except for the
// round-robin counters.
type table struct {
	router    *Router
	clusters  []tableCluster
	channelID uint64
	// err, when set, fails every pick: the channel has nothing to route with.
	err error
}

type tableCluster struct {
	ready []grpcbalancer.SubConn
	// dones[i] and the chooser's counters belong to ready[i].
	dones      []func(grpcbalancer.DoneInfo)
	routes     []*routeinfo.Info // parallel to ready
	chooser    endpointChooser
	connecting bool
	failErr    error
	state      *clusterState
}

// picker serves the current table; publishing a table is one atomic store.
type picker struct {
	table atomic.Pointer[table]
}

func (p *picker) Pick(info grpcbalancer.PickInfo) (grpcbalancer.PickResult, error) {
	t := p.table.Load()
	if t.err != nil {
		return grpcbalancer.PickResult{}, t.err
	}
	var headers Headers
	if t.router.needsHeaders && info.Ctx != nil {
		md, _ := metadata.FromOutgoingContext(info.Ctx)
		headers = MetadataHeaders(md)
	}
	idx, route, err := t.router.pick(info.FullMethodName, headers)
	if err != nil {
		return grpcbalancer.PickResult{}, status.Error(codes.Unavailable, err.Error())
	}
	c := &t.clusters[idx]
	if call := callFromContext(info.Ctx); call != nil {
		call.cluster.Store(c.state)
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
		routeinfo.Set(info.Ctx, c.routes[i])
		return grpcbalancer.PickResult{SubConn: c.ready[i], Done: c.dones[i]}, nil
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
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return nil
	}
	b.logger = snap.cfg.logger.With("lb_policy", PolicyName)
	b.publishTimeout = snap.cfg.publishTimeout
	b.drainGrace = snap.cfg.drainGrace
	b.retryBudget = snap.cfg.retryBudget
	b.clock = snap.cfg.clock
	b.channelName = snap.channel
	if b.channels != snap.channels {
		if b.channels != nil {
			b.channels.remove(b)
		}
		b.channels = snap.channels
		if b.channels != nil {
			b.channels.add(b)
		}
	}
	p := b.newPlan(snap)
	b.ensureSubConns(p)
	// The first table waits for its clusters too: RPCs queued meanwhile are
	// picked again when a table arrives, and re-picking only among the
	// clusters already connected would skew a weighted split toward them.
	b.setPending(p)
	b.mu.Unlock()
	b.notify()
	return nil
}

// ResolverError fails every RPC when a needed resource no longer exists, or
// when no snapshot was ever good; other errors keep the current table.
func (b *routerBalancer) ResolverError(err error) {
	b.mu.Lock()
	if b.closed || (b.published != nil && !errors.Is(err, ErrResourceNotFound)) {
		logger := b.logger
		b.mu.Unlock()
		logger.Warn("resolver error; keeping the current routing table", "error", err)
		return
	}
	b.logger.Warn("no routing table", "error", err)
	b.published = nil
	b.setPending(nil)
	b.drainUnused()
	// A plain error, as for a cluster with no ready endpoint: fail-fast RPCs
	// fail with UNAVAILABLE and this reason; wait-for-ready RPCs wait.
	b.picker.table.Store(&table{err: err})
	b.state = connectivity.TransientFailure
	b.dirty = true
	b.mu.Unlock()
	b.notify()
}

// UpdateSubConnState is never called: every SubConn has a StateListener.
func (b *routerBalancer) UpdateSubConnState(sc grpcbalancer.SubConn, s grpcbalancer.SubConnState) {
	b.logger.Error("unexpected UpdateSubConnState", "subconn", sc, "state", s.ConnectivityState)
}

// ExitIdle reconnects idle SubConns.
func (b *routerBalancer) ExitIdle() {
	b.mu.Lock()
	defer b.mu.Unlock()
	for _, s := range b.subConns {
		if s.state == connectivity.Idle {
			s.sc.Connect()
		}
	}
}

// Close shuts every SubConn down and waits for the balancer's timers.
func (b *routerBalancer) Close() {
	b.mu.Lock()
	b.closed = true
	if b.channels != nil {
		b.channels.remove(b)
	}
	for name, d := range b.outliers {
		d.stop()
		delete(b.outliers, name)
	}
	b.stopTimer(b.pendingTimer)
	b.pendingTimer = nil
	for k, s := range b.subConns {
		b.stopTimer(s.drain)
		s.sc.Shutdown()
		delete(b.subConns, k)
	}
	b.mu.Unlock()
	b.timers.Wait()
}

// newPlan resolves a snapshot into the SubConns each cluster uses.
func (b *routerBalancer) newPlan(snap *snapshot) *plan {
	r := snap.router
	p := &plan{router: r, clusters: make([]planCluster, len(r.clusters))}
	for _, cr := range r.routes {
		var prev uint64
		for _, leg := range cr.legs {
			if leg.cumulative > prev {
				p.clusters[leg.cluster].carriesTraffic = true
			}
			prev = leg.cumulative
		}
	}
	for i := range p.clusters {
		// A cluster_header route may send traffic to any cluster.
		p.clusters[i].carriesTraffic = p.clusters[i].carriesTraffic || r.headerRouted
	}
	for i, name := range r.clusters {
		pc := &p.clusters[i]
		pc.name = name
		cluster := snap.clusters[name]
		if cluster == nil {
			pc.missing = snap.unusable(name, nil)
			continue
		}
		pc.maxRequests = cluster.MaxRequests
		pc.lb = lbConfigOf(cluster)
		pc.outlier = cluster.OutlierDetection
		tls := b.canonicalTLS(name, cluster.TLS)
		if cluster.Type == xdsclient.ClusterLogicalDNS {
			pc.endpoints = []weightedAddr{{addr: cluster.DNSAddress, weight: 1}}
		} else {
			eps := snap.endpoints[name]
			if eps == nil {
				pc.missing = snap.unusable(name, cluster)
				continue
			}
			// Every priority is connected, so that failover is immediate.
			pc.endpoints = weightedEndpoints(eps)
		}
		for _, wa := range pc.endpoints {
			pc.keys = append(pc.keys, scKey{cluster: name, addr: wa.addr, tls: tls})
		}
	}
	return p
}

func (b *routerBalancer) canonicalTLS(cluster string, tls *xdsclient.UpstreamTLS) *xdsclient.UpstreamTLS {
	if old, ok := b.tls[cluster]; ok && equalTLS(old, tls) {
		return old
	}
	b.tls[cluster] = tls
	return tls
}

// ensureSubConns creates and connects the SubConns p needs and stops the
// draining of those it needs again.
func (b *routerBalancer) ensureSubConns(p *plan) {
	for _, pc := range p.clusters {
		for _, k := range pc.keys {
			if s := b.subConns[k]; s != nil {
				if s.drain != nil {
					b.stopTimer(s.drain)
					s.drain = nil
				}
				continue
			}
			b.newSubConn(k)
		}
	}
}

func (b *routerBalancer) newSubConn(k scKey) {
	addr := handshake.Set(resolver.Address{Addr: k.addr}, &handshake.Info{Cluster: k.cluster, TLS: k.tls})
	s := &subConn{key: k, state: connectivity.Idle}
	sc, err := b.cc.NewSubConn([]resolver.Address{addr}, grpcbalancer.NewSubConnOptions{
		StateListener: func(st grpcbalancer.SubConnState) { b.onSubConnState(s, st) },
	})
	if err != nil {
		b.logger.Error("cannot create subconn", "cluster", k.cluster, "address", k.addr, "error", err)
		return
	}
	s.sc = sc
	b.subConns[k] = s
	sc.Connect()
}

func (b *routerBalancer) onSubConnState(s *subConn, st grpcbalancer.SubConnState) {
	b.mu.Lock()
	if b.closed || b.subConns[s.key] != s || st.ConnectivityState == connectivity.Shutdown {
		b.mu.Unlock()
		return
	}
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
	if b.published != nil {
		b.rebuildTable()
	}
	b.evaluatePending()
	b.mu.Unlock()
	b.notify()
}

// setPending makes p the plan waiting to be published, or publishes it at
// once when it can.
func (b *routerBalancer) setPending(p *plan) {
	b.pending = p
	if p == nil {
		b.stopTimer(b.pendingTimer)
		b.pendingTimer = nil
		return
	}
	b.drainUnused()
	b.evaluatePending()
	if b.pending == p && b.pendingTimer == nil {
		b.pendingTimer = b.afterFunc(b.publishTimeout, func() {
			b.mu.Lock()
			if b.closed || b.pending == nil {
				b.mu.Unlock()
				return
			}
			b.pendingTimer = nil
			b.logger.Warn("publishing routing table before every new cluster is ready", "timeout", b.publishTimeout)
			b.publish(b.pending)
			b.mu.Unlock()
			b.notify()
		})
	}
}

// evaluatePending publishes the pending plan once every cluster it sends
// traffic to can serve or has definitely failed.
func (b *routerBalancer) evaluatePending() {
	p := b.pending
	if p == nil {
		return
	}
	for _, pc := range p.clusters {
		if !pc.carriesTraffic || pc.missing != nil {
			continue
		}
		// An update that takes every endpoint from a cluster serving now
		// waits, like any other change, until it settles or the publish
		// timeout: endpoints that vanish for a moment (a server's xDS
		// stream reconnecting) must not fail calls that the old ones serve.
		if len(pc.keys) == 0 && b.servingNow(pc.name) {
			return
		}
		if !b.settled(pc.keys) {
			return
		}
	}
	b.publish(p)
}

// servingNow reports whether the published plan's cluster name has a READY
// SubConn.
func (b *routerBalancer) servingNow(name string) bool {
	if b.published == nil {
		return false
	}
	for _, old := range b.published.clusters {
		if old.name != name {
			continue
		}
		for _, k := range old.keys {
			if s := b.subConns[k]; s != nil && s.state == connectivity.Ready {
				return true
			}
		}
	}
	return false
}

// settled reports whether SubConns have a READY one, or all failed, or none.
func (b *routerBalancer) settled(keys []scKey) bool {
	allFailed := true
	for _, k := range keys {
		s := b.subConns[k]
		if s == nil {
			continue
		}
		if s.state == connectivity.Ready {
			return true
		}
		if s.state != connectivity.TransientFailure {
			allFailed = false
		}
	}
	return allFailed
}

func (b *routerBalancer) publish(p *plan) {
	b.published = p
	b.pending = nil
	b.stopTimer(b.pendingTimer)
	b.pendingTimer = nil
	b.rebuildTable()
	b.drainUnused()
	b.prune()
	b.logger.Debug("published routing table", "route_config", p.router.routeConfig, "clusters", len(p.clusters))
}

// prune forgets per-cluster state of clusters no plan uses any more.
func (b *routerBalancer) prune() {
	inUse := map[string]bool{}
	for _, p := range []*plan{b.published, b.pending} {
		if p != nil {
			for _, name := range p.router.clusters {
				inUse[name] = true
			}
		}
	}
	for name := range b.tls {
		if !inUse[name] {
			delete(b.tls, name)
		}
	}
	for name := range b.counters {
		if !inUse[name] {
			delete(b.counters, name)
		}
	}
	for name, d := range b.outliers {
		if !inUse[name] {
			d.stop()
			delete(b.outliers, name)
		}
	}
}

// rebuildTable publishes the table of b.published with the SubConns' current
// states, in one atomic store.
func (b *routerBalancer) rebuildTable() {
	p := b.published
	t := &table{router: p.router, clusters: make([]tableCluster, len(p.clusters)), channelID: b.channelID}
	anyReady, anyConnecting := false, false
	for i, pc := range p.clusters {
		tc := &t.clusters[i]
		tc.state = b.counters[pc.name]
		if tc.state == nil {
			tc.state = newClusterState(pc.name, b.retryBudget)
			b.counters[pc.name] = tc.state
		}
		tc.state.maxRequests.Store(pc.maxRequests)
		stats := b.outlierStats(pc)
		var lastErr error
		var readyAddrs []string
		var active []*atomic.Int64
		var weights []float64
		ejected := 0
		// The first priority with a ready endpoint serves; one still
		// connecting holds traffic back (RPCs wait); one whose endpoints
		// all failed or are ejected fails over to the next (gRFC A27).
		for j, k := range pc.keys {
			if j > 0 && pc.endpoints[j].priority != pc.endpoints[j-1].priority && (len(tc.ready) > 0 || tc.connecting) {
				break
			}
			s := b.subConns[k]
			if s == nil {
				continue
			}
			switch s.state {
			case connectivity.Ready:
				st := stats[k.addr]
				if st != nil && st.ejected.Load() {
					ejected++
					continue
				}
				if s.doneFor != tc.state || s.doneStats != st {
					cs := tc.state
					s.doneFor, s.doneStats = cs, st
					s.done = func(di grpcbalancer.DoneInfo) {
						s.active.Add(-1)
						cs.release()
						st.record(di.Err == nil)
					}
				}
				if s.route == nil {
					s.route = routeinfo.New(k.cluster, k.addr)
				}
				tc.ready = append(tc.ready, s.sc)
				tc.dones = append(tc.dones, s.done)
				tc.routes = append(tc.routes, s.route)
				readyAddrs = append(readyAddrs, k.addr)
				active = append(active, &s.active)
				weights = append(weights, pc.endpoints[j].weight)
			case connectivity.TransientFailure:
				if s.lastErr != nil {
					lastErr = s.lastErr
				}
			default:
				if s.failedSinceReady {
					if s.lastErr != nil {
						lastErr = s.lastErr
					}
					continue
				}
				tc.connecting = true
			}
		}
		if len(tc.ready) > 0 {
			tc.connecting = false
		}
		tc.chooser = newChooser(pc.lb, readyAddrs, active).withWeights(weights)
		// Plain errors, not statuses: gRPC fails fail-fast RPCs with
		// UNAVAILABLE and this message, and lets wait-for-ready RPCs wait
		// for the cluster to recover, as it does for any transient failure.
		switch {
		case pc.missing != nil:
			tc.failErr = fmt.Errorf("cluster %q: %w", pc.name, pc.missing)
		case len(pc.keys) == 0:
			tc.failErr = fmt.Errorf("cluster %q has no usable endpoints", pc.name)
		case ejected > 0 && len(tc.ready) == 0 && !tc.connecting:
			tc.failErr = fmt.Errorf("cluster %q: every ready endpoint is ejected by outlier detection", pc.name)
		default:
			tc.failErr = fmt.Errorf("cluster %q has no ready endpoint; last connection error: %v", pc.name, lastErr)
		}
		anyReady = anyReady || len(tc.ready) > 0
		anyConnecting = anyConnecting || tc.connecting
	}
	b.picker.table.Store(t)
	switch {
	case anyReady:
		b.state = connectivity.Ready
	case anyConnecting:
		b.state = connectivity.Connecting
	default:
		b.state = connectivity.TransientFailure
	}
	b.dirty = true
}

// drainUnused schedules the shutdown of SubConns that neither the published
// nor the pending plan uses, after the drain grace period.
func (b *routerBalancer) drainUnused() {
	used := map[scKey]bool{}
	for _, p := range []*plan{b.published, b.pending} {
		if p == nil {
			continue
		}
		for _, pc := range p.clusters {
			for _, k := range pc.keys {
				used[k] = true
			}
		}
	}
	for k, s := range b.subConns {
		if used[k] || s.drain != nil {
			continue
		}
		var timer *time.Timer
		timer = b.afterFunc(b.drainGrace, func() {
			b.mu.Lock()
			defer b.mu.Unlock()
			if b.closed || b.subConns[k] != s || s.drain != timer {
				return
			}
			b.logger.Debug("shutting down drained subconn", "cluster", k.cluster, "address", k.addr)
			delete(b.subConns, k)
			s.sc.Shutdown()
		})
		s.drain = timer
	}
}

// notify hands gRPC the picker (whose table may have changed) and the
// aggregate state, outside mu: gRPC may hold its own locks while waiting for
// this balancer.
func (b *routerBalancer) notify() {
	b.notifyMu.Lock()
	defer b.notifyMu.Unlock()
	b.mu.Lock()
	dirty, state, closed := b.dirty, b.state, b.closed
	b.dirty = false
	b.mu.Unlock()
	if !dirty || closed {
		return
	}
	b.cc.UpdateState(grpcbalancer.State{ConnectivityState: state, Picker: b.picker})
}

// afterFunc runs f after d on a goroutine that Close waits for.
func (b *routerBalancer) afterFunc(d time.Duration, f func()) *time.Timer {
	b.timers.Add(1)
	return time.AfterFunc(d, func() {
		defer b.timers.Done()
		f()
	})
}

func (b *routerBalancer) stopTimer(t *time.Timer) {
	if t != nil && t.Stop() {
		b.timers.Done()
	}
}

// equalTLS compares TLS settings by value; the regexes of SAN matchers are
// compared by their source.
func equalTLS(a, b *xdsclient.UpstreamTLS) bool {
	if a == nil || b == nil {
		return a == b
	}
	if a.SNI != b.SNI || a.Roots != b.Roots || (a.Identity == nil) != (b.Identity == nil) {
		return false
	}
	if a.Identity != nil && *a.Identity != *b.Identity {
		return false
	}
	return slices.EqualFunc(a.SubjectAltNames, b.SubjectAltNames, func(x, y xdsclient.StringMatcher) bool {
		if x.Kind != y.Kind || x.Value != y.Value || x.IgnoreCase != y.IgnoreCase || (x.Regex == nil) != (y.Regex == nil) {
			return false
		}
		return x.Regex == nil || x.Regex.String() == y.Regex.String()
	})
}

// outlierStats syncs the outlier detector of pc's cluster with its config
// and endpoints and returns its per-address stats; nil when the cluster
// has no outlier detection.
func (b *routerBalancer) outlierStats(pc planCluster) map[string]*endpointStats {
	d := b.outliers[pc.name]
	if pc.outlier == nil {
		if d != nil {
			d.stop()
			delete(b.outliers, pc.name)
		}
		return nil
	}
	if d == nil {
		d = newOutlierDetector(b.clock, &b.timers, b.onOutlierChange)
		b.outliers[pc.name] = d
	}
	addrs := make([]string, 0, len(pc.keys))
	for _, k := range pc.keys {
		addrs = append(addrs, k.addr)
	}
	return d.sync(pc.outlier, addrs)
}

// onOutlierChange republishes the table after endpoints were ejected or
// returned.
func (b *routerBalancer) onOutlierChange() {
	b.mu.Lock()
	if !b.closed && b.published != nil {
		b.rebuildTable()
	}
	b.mu.Unlock()
	b.notify()
}
