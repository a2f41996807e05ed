package balancer

import (
	"errors"
	"fmt"
	"log/slog"

	"mesh/internal/serializer"
	"mesh/xdsclient"
)

// The xDS aggregator: one per target (a gRPC channel's resolver, an HTTP
// authority of the RoundTripper). It watches the listener, its route
// config, and the clusters and endpoints the routes name, and hands the
// routing core one immutable snapshot whenever all of them are known.

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
		clusters:     map[string]*clusterWatch{},
	}
	a.ser = serializer.New(a.update)
	a.enqueue(a.watchListener)
	return a
}

// aggregator turns xDS watch events for one target into snapshots; the gRPC
// resolver and the http.RoundTripper both use it. Watch callbacks only
// queue work; the serializer's goroutine owns all state below it and is the
// only caller of Watch* (cancel, too, until Close has stopped it), so a
// client that delivers a cached resource from inside Watch* cannot
// deadlock it.
type aggregator struct {
	client       XDSClient
	cfg          *config
	logger       *slog.Logger
	listenerName string
	authority    string
	onSnapshot   func(*snapshot)
	onError      func(error)

	// ser runs the watch callbacks, then update after each batch.
	ser *serializer.Serializer

	// Owned by ser's goroutine, then by Close.
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

func (r *aggregator) enqueue(f func()) { r.ser.Schedule(f) }

// Close cancels every watch and waits for the aggregator's goroutine.
func (r *aggregator) Close() {
	r.ser.Close()
	r.cancelAll()
}

func (r *aggregator) cancelAll() {
	if r.ldsCancel != nil {
		r.ldsCancel()
		r.ldsCancel = nil
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
	// link is where the LB policy of a channel made with DialOptions
	// publishes its tables for the channel's interceptors; nil otherwise.
	link *channelLink
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
