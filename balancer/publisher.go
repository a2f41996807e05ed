package balancer

import (
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/connectivity"
)

// endpointConn is one connection to one endpoint, as the publisher sees it:
// a gRPC SubConn (lb.go) or an HTTP connection pool (roundtripper.go). Its
// pickable form P is what a routing table hands a pick.
type endpointConn[P any] interface {
	comparable
	key() scKey
	// routingState is read under the publisher's lock.
	routingState() connState
	// health is the state ClusterStates shows.
	health() connectivity.State
	// inFlight counts requests in flight on the connection (least_request).
	inFlight() *atomic.Int64
	// pickable returns the form a table serves, counted against cs and
	// recording outcomes in st (nil without outlier detection).
	pickable(cs *clusterState, st *endpointStats) P
}

// frontEnd is what a publisher calls back: the gRPC LB policy or an HTTP
// channel.
type frontEnd[C endpointConn[P], P any] interface {
	// newConn creates the connection of k and starts connecting it, if that
	// applies; the publisher has already recorded it.
	newConn(k scKey) (C, error)
	connect(c C)
	closeConn(c C)
	// busy reports whether a drained connection still carries requests,
	// so that closing it waits for them.
	busy(c C) bool
	// setTable hands over a new table, under the publisher's lock.
	setTable(t *routeTable[P], state connectivity.State)
	// notify runs after every change, outside the lock.
	notify()
}

// publisherID tells the tables of one publisher from those of another.
type publisherID struct{ _ byte }

// publisher is the stateful half of the routing core, shared by both
// front-ends: it owns the connections of a channel and publishes a routing
// table whenever a plan or a connection changes. A new plan waits (pending)
// until every cluster it sends traffic to can serve or has definitely
// failed, or for the publish timeout, while the old table serves;
// connections no plan uses drain for the drain grace before they close.
type publisher[C endpointConn[P], P any] struct {
	fe        frontEnd[C, P]
	id        *publisherID
	channelID uint64
	// waitForEndpoints makes a pending plan wait while a cluster it sends
	// traffic to has no endpoints (the RoundTripper: its connections are
	// made per request, so "ready" means "has endpoints").
	waitForEndpoints bool
	timers           sync.WaitGroup

	mu     sync.Mutex
	closed bool
	cfg    *config
	logger *slog.Logger
	conns  map[scKey]*connEntry[C]
	tls    tlsCache
	states map[string]*clusterState
	// outliers are the outlier detectors of clusters that have one.
	outliers map[string]*outlierDetector
	// published is the plan the table serves; nil before the first one
	// and after the resources went away.
	published    *plan
	pending      *plan
	pendingTimer *time.Timer
}

type connEntry[C any] struct {
	conn  C
	drain *time.Timer
}

func newPublisher[C endpointConn[P], P any](fe frontEnd[C, P], cfg *config, logger *slog.Logger, channelID uint64) *publisher[C, P] {
	return &publisher[C, P]{
		fe: fe, id: &publisherID{}, channelID: channelID, cfg: cfg, logger: logger,
		conns: map[scKey]*connEntry[C]{}, tls: tlsCache{}, states: map[string]*clusterState{}, outliers: map[string]*outlierDetector{},
	}
}

// update takes a new snapshot: its connections are made at once, and its
// table published when it can serve.
func (p *publisher[C, P]) update(snap *snapshot, logger *slog.Logger) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	p.cfg, p.logger = snap.cfg, logger
	pl := newPlan(snap, p.tls)
	p.ensureConns(pl)
	// The first table waits for its clusters too: calls queued meanwhile
	// are picked again when a table arrives, and re-picking only among the
	// clusters already connected would skew a weighted split toward them.
	p.setPending(pl)
	p.mu.Unlock()
	p.fe.notify()
}

// fail publishes a table that fails every call with err, when a needed
// resource no longer exists or no snapshot was ever good; other errors
// keep the current table.
func (p *publisher[C, P]) fail(err error) {
	p.mu.Lock()
	if p.closed || (p.published != nil && !errors.Is(err, ErrResourceNotFound)) {
		logger := p.logger
		p.mu.Unlock()
		logger.Warn("xds error; keeping the current routing table", "error", err)
		return
	}
	p.logger.Warn("no routing table", "error", err)
	p.published = nil
	p.setPending(nil)
	p.drainUnused()
	// A plain error, as for a cluster with no ready endpoint: fail-fast RPCs
	// fail with UNAVAILABLE and this reason; wait-for-ready RPCs wait.
	p.fe.setTable(p.newTable(&routeTable[P]{err: err}), connectivity.TransientFailure)
	p.mu.Unlock()
	p.fe.notify()
}

// connChanged applies change to c's state under the lock, if c is still
// the publisher's, and republishes.
func (p *publisher[C, P]) connChanged(c C, change func()) {
	p.mu.Lock()
	if p.closed || p.conns[c.key()] == nil || p.conns[c.key()].conn != c {
		p.mu.Unlock()
		return
	}
	change()
	if p.published != nil {
		p.rebuildTable()
	}
	p.evaluatePending()
	p.mu.Unlock()
	p.fe.notify()
}

// forEachConn calls f on every connection, under the lock.
func (p *publisher[C, P]) forEachConn(f func(C)) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, e := range p.conns {
		f(e.conn)
	}
}

// close stops every timer and closes every connection; a non-nil final
// table is published last, for callers that may still load it.
func (p *publisher[C, P]) close(final error) {
	p.mu.Lock()
	p.closed = true
	if final != nil {
		p.fe.setTable(p.newTable(&routeTable[P]{err: final}), connectivity.Shutdown)
	}
	for name, d := range p.outliers {
		d.stop()
		delete(p.outliers, name)
	}
	p.stopTimer(p.pendingTimer)
	p.pendingTimer = nil
	for k, e := range p.conns {
		p.stopTimer(e.drain)
		p.fe.closeConn(e.conn)
		delete(p.conns, k)
	}
	p.mu.Unlock()
	p.timers.Wait()
}

func (p *publisher[C, P]) newTable(t *routeTable[P]) *routeTable[P] {
	t.origin = p.id
	t.replaced = make(chan struct{})
	return t
}

// ensureConns creates the connections pl needs and stops the draining of
// those it needs again.
func (p *publisher[C, P]) ensureConns(pl *plan) {
	for _, pc := range pl.clusters {
		for _, k := range pc.keys {
			if e := p.conns[k]; e != nil {
				if e.drain != nil {
					p.stopTimer(e.drain)
					e.drain = nil
				}
				continue
			}
			c, err := p.fe.newConn(k)
			if err != nil {
				p.logger.Error("cannot create a connection", "cluster", k.cluster, "address", k.addr, "error", err)
				continue
			}
			p.conns[k] = &connEntry[C]{conn: c}
			p.fe.connect(c)
		}
	}
}

// setPending makes pl the plan waiting to be published, or publishes it at
// once when it can.
func (p *publisher[C, P]) setPending(pl *plan) {
	p.pending = pl
	if pl == nil {
		p.stopTimer(p.pendingTimer)
		p.pendingTimer = nil
		return
	}
	p.drainUnused()
	p.evaluatePending()
	if p.pending == pl && p.pendingTimer == nil {
		timeout := p.cfg.publishTimeout
		p.pendingTimer = p.afterFunc(timeout, func() {
			p.mu.Lock()
			if p.closed || p.pending == nil {
				p.mu.Unlock()
				return
			}
			p.pendingTimer = nil
			p.logger.Warn("publishing routing table before every new cluster is ready", "timeout", timeout)
			p.publish(p.pending)
			p.mu.Unlock()
			p.fe.notify()
		})
	}
}

// evaluatePending publishes the pending plan once every cluster it sends
// traffic to can serve or has definitely failed.
func (p *publisher[C, P]) evaluatePending() {
	pl := p.pending
	if pl == nil {
		return
	}
	for _, pc := range pl.clusters {
		if !pc.carriesTraffic || pc.missing != nil {
			continue
		}
		// An update that takes every endpoint from a cluster serving now
		// waits, like any other change, until it settles or the publish
		// timeout: endpoints that vanish for a moment (a server's xDS
		// stream reconnecting) must not fail calls that the old ones serve.
		if len(pc.keys) == 0 && (p.servingNow(pc.name) || p.waitForEndpoints && p.published != nil) {
			return
		}
		if !p.settled(pc.keys) {
			return
		}
	}
	p.publish(pl)
}

// servingNow reports whether the published plan's cluster name has a READY
// connection.
func (p *publisher[C, P]) servingNow(name string) bool {
	if p.published == nil {
		return false
	}
	for _, old := range p.published.clusters {
		if old.name != name {
			continue
		}
		for _, k := range old.keys {
			if e := p.conns[k]; e != nil && e.conn.routingState().state == connectivity.Ready {
				return true
			}
		}
	}
	return false
}

// settled reports whether connections have a READY one, or all failed, or
// none.
func (p *publisher[C, P]) settled(keys []scKey) bool {
	allFailed := true
	for _, k := range keys {
		e := p.conns[k]
		if e == nil {
			continue
		}
		switch e.conn.routingState().state {
		case connectivity.Ready:
			return true
		case connectivity.TransientFailure:
		default:
			allFailed = false
		}
	}
	return allFailed
}

func (p *publisher[C, P]) publish(pl *plan) {
	p.published = pl
	p.pending = nil
	p.stopTimer(p.pendingTimer)
	p.pendingTimer = nil
	p.rebuildTable()
	p.drainUnused()
	p.prune()
	p.logger.Debug("published routing table", "route_config", pl.router.routeConfig, "clusters", len(pl.clusters))
}

// prune forgets per-cluster state of clusters no plan uses any more.
func (p *publisher[C, P]) prune() {
	inUse := map[string]bool{}
	for _, pl := range []*plan{p.published, p.pending} {
		if pl != nil {
			for _, name := range pl.router.clusters {
				inUse[name] = true
			}
		}
	}
	for name := range p.tls {
		if !inUse[name] {
			delete(p.tls, name)
		}
	}
	for name := range p.states {
		if !inUse[name] {
			delete(p.states, name)
		}
	}
	for name, d := range p.outliers {
		if !inUse[name] {
			d.stop()
			delete(p.outliers, name)
		}
	}
}

// rebuildTable publishes the table of the published plan with the
// connections' current states.
func (p *publisher[C, P]) rebuildTable() {
	pl := p.published
	t, state := buildTable(pl, p.channelID, func(i int) tableInput[P] {
		pc := &pl.clusters[i]
		cs := p.states[pc.name]
		if cs == nil {
			cs = newClusterState(pc.name, p.cfg.retryBudget)
			p.states[pc.name] = cs
		}
		cs.maxRequests.Store(pc.maxRequests)
		return tableInput[P]{
			state: cs,
			stats: p.outlierStats(pc),
			conn: func(k scKey, st *endpointStats) (connState, *atomic.Int64, P, bool) {
				e := p.conns[k]
				if e == nil {
					var zero P
					return connState{}, nil, zero, false
				}
				return e.conn.routingState(), e.conn.inFlight(), e.conn.pickable(cs, st), true
			},
		}
	})
	p.fe.setTable(p.newTable(t), state)
}

// drainUnused schedules the closing of connections that neither the
// published nor the pending plan uses, after the drain grace period.
func (p *publisher[C, P]) drainUnused() {
	used := map[scKey]bool{}
	for _, pl := range []*plan{p.published, p.pending} {
		if pl == nil {
			continue
		}
		for _, pc := range pl.clusters {
			for _, k := range pc.keys {
				used[k] = true
			}
		}
	}
	for k, e := range p.conns {
		if !used[k] && e.drain == nil {
			p.scheduleDrain(k, e)
		}
	}
}

func (p *publisher[C, P]) scheduleDrain(k scKey, e *connEntry[C]) {
	var timer *time.Timer
	timer = p.afterFunc(p.cfg.drainGrace, func() {
		p.mu.Lock()
		defer p.mu.Unlock()
		if p.closed || p.conns[k] != e || e.drain != timer {
			return
		}
		if p.fe.busy(e.conn) {
			// Closing now would cut the requests still on it; look again
			// later.
			p.scheduleDrain(k, e)
			return
		}
		p.logger.Debug("closing drained connection", "cluster", k.cluster, "address", k.addr)
		delete(p.conns, k)
		p.fe.closeConn(e.conn)
	})
	e.drain = timer
}

// outlierStats syncs the outlier detector of pc's cluster with its config
// and endpoints and returns its per-address stats; nil when the cluster
// has no outlier detection.
func (p *publisher[C, P]) outlierStats(pc *planCluster) map[string]*endpointStats {
	d := p.outliers[pc.name]
	if pc.outlier == nil {
		if d != nil {
			d.stop()
			delete(p.outliers, pc.name)
		}
		return nil
	}
	if d == nil {
		d = newOutlierDetector(p.cfg.clock, &p.timers, p.onOutlierChange)
		p.outliers[pc.name] = d
	}
	return d.sync(pc.outlier, pc.addrs())
}

// onOutlierChange republishes the table after endpoints were ejected or
// returned.
func (p *publisher[C, P]) onOutlierChange() {
	p.mu.Lock()
	if !p.closed && p.published != nil {
		p.rebuildTable()
	}
	p.mu.Unlock()
	p.fe.notify()
}

// afterFunc runs f after d on a goroutine that close waits for.
func (p *publisher[C, P]) afterFunc(d time.Duration, f func()) *time.Timer {
	p.timers.Add(1)
	return time.AfterFunc(d, func() {
		defer p.timers.Done()
		f()
	})
}

func (p *publisher[C, P]) stopTimer(t *time.Timer) {
	if t != nil && t.Stop() {
		p.timers.Done()
	}
}

// clusterStates reads the published plan and the live state of its
// connections, counters and outlier detectors.
func (p *publisher[C, P]) clusterStates(channel string) []ClusterState {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed || p.published == nil {
		return nil
	}
	pl := p.published
	out := make([]ClusterState, 0, len(pl.clusters))
	for _, pc := range pl.clusters {
		cs := ClusterState{Channel: channel, Name: pc.name}
		if st := p.states[pc.name]; st != nil {
			cs.InFlight = st.inFlight.Load()
		}
		ejections := p.outliers[pc.name].ejections()
		for j, k := range pc.keys {
			wa := pc.endpoints[j]
			es := EndpointState{Address: k.addr, Locality: wa.locality, Weight: wa.endpointWeight, Health: connectivity.Idle.String()}
			if e := p.conns[k]; e != nil {
				es.Health = e.conn.health().String()
				es.InFlight = e.conn.inFlight().Load()
			}
			es.EjectedUntil, es.Ejected = ejections[k.addr]
			cs.Endpoints = append(cs.Endpoints, es)
		}
		out = append(out, cs)
	}
	return out
}
