package balancer

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"

	"google.golang.org/grpc/attributes"
	"google.golang.org/grpc/resolver"

	"mesh/xdsclient"
)

// Scheme is the URI scheme of targets the resolver serves: "mesh:///host:port".
const Scheme = "mesh"

// targetHint says how a control plane names what a target looks up.
const targetHint = `the control plane names a service's listener "host:port", ` +
	`e.g. "payments.default.svc.cluster.local:8080" (istiod and the embedded one alike); ` +
	`check the host and give the service's port (an http:// URL without one asks for port 80)`

// ErrResourceNotFound is wrapped by the error a channel reports when the
// control plane says a resource it needs does not exist, or when the
// resources it has cannot route the target at all.
var ErrResourceNotFound = errors.New("xds resource not found")

// XDSClient is the part of *xdsclient.Client the balancer uses.
type XDSClient interface {
	WatchListener(name string, fn func(xdsclient.Event[*xdsclient.Listener])) (cancel func())
	WatchRouteConfig(name string, fn func(xdsclient.Event[*xdsclient.RouteConfig])) (cancel func())
	WatchCluster(name string, fn func(xdsclient.Event[*xdsclient.Cluster])) (cancel func())
	WatchEndpoints(name string, fn func(xdsclient.Event[*xdsclient.Endpoints])) (cancel func())
}

// serviceConfigJSON selects this package's LB policy for every channel the
// resolver serves.
const serviceConfigJSON = `{"loadBalancingConfig":[{"` + PolicyName + `":{}}]}`

// NewResolverBuilder returns the resolver for "mesh:///host:port" targets.
// Pass it to each channel with grpc.WithResolvers; it is never registered
// globally. Each channel it builds watches the listener "host:port" (see
// WithListenerNameTemplate), its route config, and the clusters and
// endpoints the routes name, and hands the LB policy one immutable snapshot
// whenever all of them are known. Its ClientInterceptors apply the routes'
// timeouts and retry policies to the channels it serves.
func NewResolverBuilder(client XDSClient, opts ...Option) *ResolverBuilder {
	cfg := newConfig(opts)
	return &ResolverBuilder{client: client, cfg: cfg, routers: newRouterRegistry(), channels: newChannelRegistry(), faults: &faultInjector{clock: cfg.clock}}
}

// ResolverBuilder is the resolver.Builder of the "mesh" scheme; see
// NewResolverBuilder.
type ResolverBuilder struct {
	client  XDSClient
	cfg     *config
	routers *routerRegistry
	// channels are the LB policies of live channels, for ClusterStates.
	channels *channelRegistry
	faults   *faultInjector
}

// Scheme returns Scheme.
func (b *ResolverBuilder) Scheme() string { return Scheme }

// Build starts resolving target for one channel.
func (b *ResolverBuilder) Build(target resolver.Target, cc resolver.ClientConn, _ resolver.BuildOptions) (resolver.Resolver, error) {
	if b.client == nil {
		return nil, errors.New("mesh resolver: xds client is nil")
	}
	authority := target.Endpoint()
	if authority == "" {
		return nil, fmt.Errorf("mesh resolver: target %q: want mesh:///host:port", target.String())
	}
	sc := cc.ParseServiceConfig(serviceConfigJSON)
	if sc.Err != nil {
		return nil, fmt.Errorf("mesh resolver: service config: %w", sc.Err)
	}
	r := &xdsResolver{}
	r.agg = newAggregator(b.client, b.cfg, authority, b.cfg.logger.With("target", target.String()),
		func(snap *snapshot) {
			snap.channels = b.channels
			b.routers.publish(authority, r, snap.router)
			err := cc.UpdateState(resolver.State{ServiceConfig: sc, Attributes: attributes.New(snapshotKey{}, snap)})
			if err != nil {
				r.agg.logger.Debug("channel did not accept the snapshot", "error", err)
			}
		},
		cc.ReportError)
	r.stop = func() { b.routers.forget(authority, r) }
	return r, nil
}

// xdsResolver is the gRPC face of an aggregator.
type xdsResolver struct {
	agg  *aggregator
	stop func()
}

// ResolveNow is a no-op: the control plane pushes every change.
func (r *xdsResolver) ResolveNow(resolver.ResolveNowOptions) {}

// Close cancels every watch and waits for the aggregator's goroutine.
func (r *xdsResolver) Close() {
	r.agg.Close()
	r.stop()
}

// listenerName returns the listener to watch for authority "host:port".
func (c *config) listenerName(authority string) string {
	if c.listenerNamer != nil {
		return c.listenerNamer(authority)
	}
	if c.listenerTemplate != "" {
		return strings.ReplaceAll(c.listenerTemplate, "%s", authority)
	}
	return authority
}

// newAggregator starts watching the listener for authority and everything
// it leads to. onSnapshot receives every complete snapshot and onError every
// reason there is none, both from the aggregator's goroutine.
func newAggregator(client XDSClient, cfg *config, authority string, logger *slog.Logger, onSnapshot func(*snapshot), onError func(error)) *aggregator {
	listenerName := cfg.listenerName(authority)
	a := &aggregator{
		client:       client,
		cfg:          cfg,
		logger:       logger.With("listener", listenerName),
		listenerName: listenerName,
		authority:    authority,
		onSnapshot:   onSnapshot,
		onError:      onError,
		wake:         make(chan struct{}, 1),
		done:         make(chan struct{}),
		stopped:      make(chan struct{}),
		clusters:     map[string]*clusterWatch{},
	}
	go a.run()
	a.enqueue(a.watchListener)
	return a
}

// aggregator turns xDS watch events for one target into snapshots; the gRPC
// resolver and the http.RoundTripper both use it. Watch callbacks only
// queue work; one goroutine (run) owns all state below the queue and is the
// only caller of Watch* and cancel, so a client that delivers a cached
// resource from inside Watch* cannot deadlock it.
type aggregator struct {
	client       XDSClient
	cfg          *config
	logger       *slog.Logger
	listenerName string
	authority    string
	onSnapshot   func(*snapshot)
	onError      func(error)

	queueMu sync.Mutex
	queue   []func()
	wake    chan struct{}
	done    chan struct{}
	stopped chan struct{}
	once    sync.Once

	// Owned by run.
	ldsCancel        func()
	listener         *xdsclient.Listener
	listenerNotFound bool
	rds              *rdsWatch
	clusters         map[string]*clusterWatch
	sentSnapshot     bool
	reportedErr      string
}

type rdsWatch struct {
	name     string
	cancel   func()
	rc       *xdsclient.RouteConfig
	notFound bool
}

type clusterWatch struct {
	name      string
	cdsCancel func()
	cluster   *xdsclient.Cluster
	cdsKnown  bool // a resource, NotFound or a rejection arrived
	// rejected is why the cluster was NACKed before it was ever good.
	rejected error
	eds      *edsWatch
}

type edsWatch struct {
	name      string
	cancel    func()
	endpoints *xdsclient.Endpoints
	known     bool
	rejected  error // why they were NACKed before they were ever good
}

func (r *aggregator) enqueue(f func()) {
	r.queueMu.Lock()
	r.queue = append(r.queue, f)
	r.queueMu.Unlock()
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

func (r *aggregator) run() {
	defer close(r.stopped)
	defer r.cancelAll()
	for {
		select {
		case <-r.done:
			return
		case <-r.wake:
		}
		r.queueMu.Lock()
		batch := r.queue
		r.queue = nil
		r.queueMu.Unlock()
		for _, f := range batch {
			f()
		}
		select {
		case <-r.done:
			return
		default:
		}
		r.update()
	}
}

// Close cancels every watch and waits for the aggregator's goroutine.
func (r *aggregator) Close() {
	r.once.Do(func() { close(r.done) })
	<-r.stopped
}

func (r *aggregator) cancelAll() {
	if r.ldsCancel != nil {
		r.ldsCancel()
	}
	r.setRDS("")
	for name, cw := range r.clusters {
		cw.stop()
		delete(r.clusters, name)
	}
}

func (cw *clusterWatch) stop() {
	cw.cdsCancel()
	if cw.eds != nil {
		cw.eds.cancel()
	}
}

func (r *aggregator) watchListener() {
	r.ldsCancel = r.client.WatchListener(r.listenerName, func(ev xdsclient.Event[*xdsclient.Listener]) {
		r.enqueue(func() {
			switch {
			case ev.NotFound:
				r.listener, r.listenerNotFound = nil, true
			case ev.Err != nil:
				r.resourceError("listener", r.listenerName, ev.Err, r.listener != nil)
			case ev.Resource != nil:
				r.listener, r.listenerNotFound = ev.Resource, false
			}
		})
	})
}

// setRDS makes the RDS watch follow name; "" cancels it.
func (r *aggregator) setRDS(name string) {
	if r.rds != nil && r.rds.name == name {
		return
	}
	if r.rds != nil {
		r.rds.cancel()
		r.rds = nil
	}
	if name == "" {
		return
	}
	w := &rdsWatch{name: name}
	r.rds = w
	w.cancel = r.client.WatchRouteConfig(name, func(ev xdsclient.Event[*xdsclient.RouteConfig]) {
		r.enqueue(func() {
			if r.rds != w {
				return // a stale event of a cancelled watch
			}
			switch {
			case ev.NotFound:
				w.rc, w.notFound = nil, true
			case ev.Err != nil:
				r.resourceError("route config", name, ev.Err, w.rc != nil)
			case ev.Resource != nil:
				w.rc, w.notFound = ev.Resource, false
			}
		})
	})
}

func (r *aggregator) watchCluster(name string) *clusterWatch {
	cw := &clusterWatch{name: name}
	cw.cdsCancel = r.client.WatchCluster(name, func(ev xdsclient.Event[*xdsclient.Cluster]) {
		r.enqueue(func() {
			if r.clusters[name] != cw {
				return
			}
			switch {
			case ev.NotFound:
				cw.cluster, cw.cdsKnown, cw.rejected = nil, true, nil
			case ev.Err != nil:
				r.resourceError("cluster", name, ev.Err, cw.cluster != nil)
				if cw.cluster == nil && errors.Is(ev.Err, xdsclient.ErrResourceRejected) {
					cw.cdsKnown, cw.rejected = true, ev.Err
				}
			case ev.Resource != nil:
				cw.cluster, cw.cdsKnown, cw.rejected = ev.Resource, true, nil
			}
		})
	})
	return cw
}

// setEDS makes cw's endpoints watch follow name; "" cancels it.
func (r *aggregator) setEDS(cw *clusterWatch, name string) {
	if cw.eds != nil && cw.eds.name == name {
		return
	}
	if cw.eds != nil {
		cw.eds.cancel()
		cw.eds = nil
	}
	if name == "" {
		return
	}
	w := &edsWatch{name: name}
	cw.eds = w
	w.cancel = r.client.WatchEndpoints(name, func(ev xdsclient.Event[*xdsclient.Endpoints]) {
		r.enqueue(func() {
			if r.clusters[cw.name] != cw || cw.eds != w {
				return
			}
			switch {
			case ev.NotFound:
				w.endpoints, w.known, w.rejected = nil, true, nil
			case ev.Err != nil:
				r.resourceError("endpoints", name, ev.Err, w.endpoints != nil)
				if w.endpoints == nil && errors.Is(ev.Err, xdsclient.ErrResourceRejected) {
					w.known, w.rejected = true, ev.Err
				}
			case ev.Resource != nil:
				w.endpoints, w.known, w.rejected = ev.Resource, true, nil
			}
		})
	})
}

// resourceError logs a NACK or stream error; the last good resource stays in
// force. Only a channel that has never had a usable snapshot, about a
// resource it holds no version of, reports it, so that its RPCs fail with
// the reason instead of waiting. A resource served from the last-good
// cache while the control plane is down has a version: that error is only
// logged, and the snapshot being assembled from the cache goes ahead.
func (r *aggregator) resourceError(kind, name string, err error, haveVersion bool) {
	r.logger.Warn("xds resource error; keeping the last good version", "type", kind, "name", name, "error", err)
	if !r.sentSnapshot && !haveVersion {
		r.reportError(fmt.Errorf("%s %q: %w", kind, name, err))
	}
}

func (r *aggregator) reportError(err error) {
	if err.Error() == r.reportedErr {
		return
	}
	r.reportedErr = err.Error()
	r.onError(err)
}

// update recomputes what to watch and, when everything needed is known,
// sends a snapshot.
func (r *aggregator) update() {
	if r.listenerNotFound {
		r.reportError(fmt.Errorf("%w: listener %q (looked up for target %q); %s", ErrResourceNotFound, r.listenerName, r.authority, targetHint))
		return
	}
	if r.listener == nil {
		return
	}
	hcm := r.listener.HTTP
	if hcm == nil {
		r.reportError(fmt.Errorf("%w: listener %q: not a client listener (no api_listener http connection manager)", ErrResourceNotFound, r.listenerName))
		return
	}
	var rc *xdsclient.RouteConfig
	if hcm.RouteConfig != nil {
		r.setRDS("")
		rc = hcm.RouteConfig
	} else {
		r.setRDS(hcm.RouteConfigName)
		if r.rds == nil {
			r.reportError(fmt.Errorf("%w: listener %q: no route config", ErrResourceNotFound, r.listenerName))
			return
		}
		if r.rds.notFound {
			r.reportError(fmt.Errorf("%w: route config %q (listener %q)", ErrResourceNotFound, r.rds.name, r.listenerName))
			return
		}
		rc = r.rds.rc
		if rc == nil {
			return
		}
	}
	router, err := NewRouter(rc, r.authority)
	if err != nil {
		r.reportError(fmt.Errorf("%w: listener %q: %w", ErrResourceNotFound, r.listenerName, err))
		return
	}
	router.faults = faultFilters(hcm.HTTPFilters)
	router.faultHeaders = faultsReadHeaders(router)

	wanted := make(map[string]bool, len(router.clusters))
	for _, name := range router.clusters {
		wanted[name] = true
		if r.clusters[name] == nil {
			r.clusters[name] = r.watchCluster(name)
		}
	}
	for name, cw := range r.clusters {
		if !wanted[name] {
			cw.stop()
			delete(r.clusters, name)
		}
	}

	snap := &snapshot{
		router:    router,
		clusters:  make(map[string]*xdsclient.Cluster, len(wanted)),
		endpoints: make(map[string]*xdsclient.Endpoints, len(wanted)),
		cfg:       r.cfg,
		channel:   r.authority,
	}
	complete := true
	for _, name := range router.clusters {
		cw := r.clusters[name]
		switch {
		case cw == nil || !cw.cdsKnown:
			complete = false
		case cw.cluster == nil: // not found or rejected: the LB policy fails its RPCs
			r.setEDS(cw, "")
			snap.clusters[name] = nil
			if cw.rejected != nil {
				snap.setFailure(name, cw.rejected)
			}
		case cw.cluster.Type == xdsclient.ClusterLogicalDNS:
			r.setEDS(cw, "")
			snap.clusters[name] = cw.cluster
		default:
			r.setEDS(cw, cw.cluster.EndpointsName())
			snap.clusters[name] = cw.cluster
			if !cw.eds.known {
				complete = false
			}
			snap.endpoints[name] = cw.eds.endpoints
			if cw.eds.rejected != nil {
				snap.setFailure(name, cw.eds.rejected)
			}
		}
	}
	if !complete {
		return
	}
	r.sentSnapshot = true
	r.reportedErr = ""
	r.onSnapshot(snap)
}

type snapshotKey struct{}

// snapshot is everything the LB policy of one channel needs, immutable. A
// nil cluster or endpoints entry means the control plane says it does not
// exist.
type snapshot struct {
	router    *Router
	clusters  map[string]*xdsclient.Cluster
	endpoints map[string]*xdsclient.Endpoints
	cfg       *config
	// failures holds why a cluster with a nil entry (or nil endpoints)
	// cannot be used when the reason is not that it does not exist: it
	// was rejected before it was ever good.
	failures map[string]error
	// channel is the authority the snapshot routes; channels is the
	// registry of the ResolverBuilder that made it (nil for the
	// RoundTripper), which the LB policy joins for ClusterStates.
	channel  string
	channels *channelRegistry
}

func (s *snapshot) setFailure(cluster string, err error) {
	if s.failures == nil {
		s.failures = map[string]error{}
	}
	s.failures[cluster] = err
}

// unusable is why the RPCs of cluster, whose cluster or endpoints entry is
// nil, fail: the rejection that left it without a version, or else that
// the control plane says it does not exist.
func (s *snapshot) unusable(name string, cluster *xdsclient.Cluster) error {
	if err := s.failures[name]; err != nil {
		return err
	}
	if cluster == nil {
		return fmt.Errorf("%w: cluster %q", ErrResourceNotFound, name)
	}
	return fmt.Errorf("%w: endpoints %q of cluster %q", ErrResourceNotFound, cluster.EndpointsName(), name)
}

func snapshotFrom(s resolver.State) *snapshot {
	snap, _ := s.Attributes.Value(snapshotKey{}).(*snapshot)
	return snap
}

// routerRegistry maps each authority that live channels resolve to its
// current Router, for the client interceptors, which see the channel's
// target but not its LB policy.
type routerRegistry struct {
	mu     sync.Mutex
	owners map[string]map[*xdsResolver]bool
	// current maps authority to *Router; read without a lock per RPC.
	current sync.Map
}

func newRouterRegistry() *routerRegistry {
	return &routerRegistry{owners: map[string]map[*xdsResolver]bool{}}
}

func (g *routerRegistry) publish(authority string, owner *xdsResolver, r *Router) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.owners[authority] == nil {
		g.owners[authority] = map[*xdsResolver]bool{}
	}
	g.owners[authority][owner] = true
	g.current.Store(authority, r)
}

func (g *routerRegistry) forget(authority string, owner *xdsResolver) {
	g.mu.Lock()
	defer g.mu.Unlock()
	delete(g.owners[authority], owner)
	if len(g.owners[authority]) == 0 {
		delete(g.owners, authority)
		g.current.Delete(authority)
	}
}

func (g *routerRegistry) lookup(authority string) *Router {
	r, _ := g.current.Load(authority)
	router, _ := r.(*Router)
	return router
}
