package xdsclient

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"

	corepb "mesh/xdsclient/internal/lite/envoy/config/core/v3"
)

// ErrResourceRejected is wrapped by the Err of a watch event when the
// control plane sent an invalid version of the resource and it was
// NACKed; the last good version stays in force. Other Errs (the stream
// broke, an xdstp name is malformed or names an unknown authority) are
// connectivity or configuration problems the client reports as it finds
// them.
var ErrResourceRejected = errors.New("xds: resource rejected")

// Errors wrapped by other watch events and Dump entries; only the
// package's own tests tell them apart.
var (
	// errStreamFailed: the ADS stream broke; the client is reconnecting.
	errStreamFailed = errors.New("xds: ADS stream failed")
	// errResourceNotFound: the server does not have the resource. It is
	// wrapped by the Error of a DOES_NOT_EXIST entry in Dump.
	errResourceNotFound = errors.New("xds: resource does not exist")
	// errUnknownAuthority: a watched xdstp name has an authority the
	// bootstrap's authorities do not list (gRFC A47). No stream is opened.
	errUnknownAuthority = errors.New("xds: unknown authority")
	// errInvalidResourceName: a watched xdstp name is malformed or names
	// another resource type.
	errInvalidResourceName = errors.New("xds: invalid resource name")
)

// resourceKind indexes the resource types.
type resourceKind int

const (
	kindListener resourceKind = iota
	kindRouteConfig
	kindCluster
	kindEndpoints
	kindSecret
	numKinds
)

// kindInfo describes one resource type on the wire.
type kindInfo struct {
	name    string
	typeURL string
	// fullState types (LDS, CDS) list every subscribed resource in each
	// response, so absence means deletion (gRFC A27).
	fullState bool
	decode    func(dc *decodeContext, a *anypb.Any) (string, any, error)
}

func kinds() [numKinds]kindInfo {
	return [numKinds]kindInfo{
		kindListener: {"listener", typeURLListener, true, func(dc *decodeContext, a *anypb.Any) (string, any, error) {
			n, v, err := dc.decodeListener(a)
			return n, v, err
		}},
		kindRouteConfig: {"route_config", typeURLRouteConfig, false, func(dc *decodeContext, a *anypb.Any) (string, any, error) {
			n, v, err := dc.decodeRouteConfig(a)
			return n, v, err
		}},
		kindCluster: {"cluster", typeURLCluster, true, func(dc *decodeContext, a *anypb.Any) (string, any, error) {
			n, v, err := dc.decodeCluster(a)
			return n, v, err
		}},
		kindEndpoints: {"cluster_load_assignment", typeURLEndpoints, false, func(dc *decodeContext, a *anypb.Any) (string, any, error) {
			n, v, err := dc.decodeEndpoints(a)
			return n, v, err
		}},
		kindSecret: {"secret", typeURLSecret, false, func(dc *decodeContext, a *anypb.Any) (string, any, error) {
			n, v, err := dc.decodeSecret(a)
			return n, v, err
		}},
	}
}

// rawEvent is an Event before it is typed for a watcher.
type rawEvent struct {
	value    any
	err      error
	notFound bool
}

type watcher struct {
	fn        func(rawEvent)
	cancelled atomic.Bool
}

// resourceState is the cache entry and subscription of one resource name.
type resourceState struct {
	watchers map[*watcher]struct{}
	value    any
	raw      []byte // serialized proto of value, to skip unchanged updates
	hasValue bool
	notFound bool
	// requested is set once the name went out in a request on the
	// current stream; only then can its absence mean deletion.
	requested bool
	// retired marks a cached resource whose last watcher left. It stays
	// until the next request without its name reaches the server: a
	// watch re-added before that gets the cached value, because the server
	// still believes we hold it and will not resend it.
	retired bool
	timer   *time.Timer

	// What Dump and CSDS report.
	version   string    // the resource's version (SotW: the response's)
	source    string    // URI of the server it came from
	fromCache bool      // loaded from the WithCache file, not yet confirmed by a server
	updatedAt time.Time // when the current value (or NotFound) arrived
	nackErr   error     // why the last update was rejected; nil after a good one
	nackAt    time.Time
	nackVer   string
	absentErr error    // why the resource is NotFound
	ignored   []string // fields of the current value mesh does not implement

	// channel is the key of the server set (and so the ADS stream) the
	// resource comes from: its authority's servers for an xdstp name,
	// the top-level ones otherwise.
	channel string
}

// serverSet is one distinct list of xDS servers: the top-level one or an
// authority's. Authorities with equal lists share its ADS stream.
type serverSet struct {
	key     string
	servers []ServerConfig
	// creds are each server's channel and call credentials.
	creds []serverCreds
}

// Client is an xDS client: one ADS stream per distinct server list (the
// top-level xds_servers and each authority's, gRFC A47), shared by every
// watch routed to it, with a cache of the last good version of each
// resource.
type Client struct {
	bs    *Bootstrap
	opts  options
	log   *slog.Logger
	kinds [numKinds]kindInfo
	dc    *decodeContext
	node  *corepb.Node
	// serverSets are keyed by serverListKey; defaultSet is the top-level
	// xds_servers' key and authoritySets maps each authority to its key.
	serverSets    map[string]*serverSet
	defaultSet    string
	authoritySets map[string]string
	events        *serializer
	now           func() time.Time
	meter         *clientMetrics
	cache         *persister // nil without WithCache

	wg sync.WaitGroup // the channels' run goroutines

	mu      sync.Mutex
	closed  bool
	watches [numKinds]map[string]*resourceState
	// channels holds one ADS stream per server set, keyed like
	// serverSets, each started by the first watch that needs it.
	channels map[string]*adsChannel
	// loggedIgnored remembers which ignored fields were logged, so each
	// is logged once per resource type.
	loggedIgnored map[string]bool
}

// New validates bs and returns a Client. No connection is made until the
// first watch.
func New(bs *Bootstrap, opts ...Option) (*Client, error) {
	if err := bs.Validate(); err != nil {
		return nil, err
	}
	o := defaultOptions()
	for _, opt := range opts {
		opt.apply(&o)
	}
	node, err := nodeProto(bs.Node)
	if err != nil {
		return nil, err
	}
	sets := map[string]*serverSet{}
	defaultSet, err := addServerSet(sets, bs.Servers, "xds_servers")
	if err != nil {
		return nil, err
	}
	authoritySets := make(map[string]string, len(bs.Authorities))
	for _, name := range slices.Sorted(maps.Keys(bs.Authorities)) {
		servers, path := bs.Authorities[name].Servers, "authorities."+name+".xds_servers"
		if len(servers) == 0 {
			servers, path = bs.Servers, "xds_servers"
		}
		if authoritySets[name], err = addServerSet(sets, servers, path); err != nil {
			return nil, err
		}
	}
	c := &Client{
		bs:            bs,
		opts:          o,
		log:           o.logger,
		kinds:         kinds(),
		dc:            &decodeContext{providers: bs.CertificateProviders, logger: o.logger},
		node:          node,
		serverSets:    sets,
		defaultSet:    defaultSet,
		authoritySets: authoritySets,
		channels:      map[string]*adsChannel{},
		events:        newSerializer(),
		now:           time.Now,

		loggedIgnored: map[string]bool{},
	}
	if c.dc.providers == nil {
		c.dc.providers = map[string]CertificateProvider{}
	}
	for k := range c.watches {
		c.watches[k] = map[string]*resourceState{}
	}
	meter, err := newClientMetrics(c, o.meterProvider)
	if err != nil {
		c.events.close()
		return nil, err
	}
	c.meter = meter
	if o.cachePath != "" {
		// The persister first, so what the file held is kept even if no
		// response ever arrives.
		c.cache = newPersister(c, o.cachePath)
		c.loadCache(o.cachePath)
	}
	return c, nil
}

// addServerSet adds servers to sets unless an equal list is there, and
// returns its key.
func addServerSet(sets map[string]*serverSet, servers []ServerConfig, path string) (string, error) {
	key, err := serverListKey(servers)
	if err != nil {
		return "", fmt.Errorf("bootstrap: %s: %w", path, err)
	}
	if sets[key] != nil {
		return key, nil
	}
	set := &serverSet{key: key, servers: servers, creds: make([]serverCreds, len(servers))}
	for i, s := range servers {
		if set.creds[i], err = credsFor(s, fmt.Sprintf("%s[%d]", path, i)); err != nil {
			return "", err
		}
	}
	sets[key] = set
	return key, nil
}

// serverListKey identifies a server list by its whole config, so that
// the same server named by several authorities gets one stream (gRFC A47).
func serverListKey(servers []ServerConfig) (string, error) {
	b, err := json.Marshal(servers)
	if err != nil {
		return "", err
	}
	return string(b), nil
}

// routeName canonicalizes a watched name and picks its server set: an
// xdstp name's authority decides, an old-style name uses the top-level
// servers.
func (c *Client) routeName(kind resourceKind, name string) (canonical, set string, err error) {
	if !isXDSTP(name) {
		return name, c.defaultSet, nil
	}
	canonical, err = canonicalResourceName(c.kinds[kind].typeURL, name)
	if err != nil {
		return "", "", fmt.Errorf("%w: %s: %w", errInvalidResourceName, c.kinds[kind].name, err)
	}
	n, _ := parseXDSTPName(canonical)
	set, ok := c.authoritySets[n.authority]
	if !ok {
		return "", "", fmt.Errorf("%w: %s %q: authority %q is not in the bootstrap's authorities", errUnknownAuthority, c.kinds[kind].name, name, n.authority)
	}
	return canonical, set, nil
}

// userAgentName identifies mesh to control planes.
const userAgentName = "mesh"

func nodeProto(n Node) (*corepb.Node, error) {
	pb := &corepb.Node{
		Id:            n.ID,
		Cluster:       n.Cluster,
		UserAgentName: userAgentName,
		// Same feature flags as gRPC clients, so control planes treat us alike.
		ClientFeatures: []string{"envoy.lb.does_not_support_overprovisioning", "xds.config.resource-in-sotw"},
	}
	if n.Locality != (Locality{}) {
		pb.Locality = &corepb.Locality{Region: n.Locality.Region, Zone: n.Locality.Zone, SubZone: n.Locality.SubZone}
	}
	if len(n.Metadata) > 0 {
		md, err := structpb.NewStruct(n.Metadata)
		if err != nil {
			return nil, fmt.Errorf("bootstrap: node.metadata: %w", err)
		}
		pb.Metadata = md
	}
	return pb, nil
}

// Bootstrap returns the bootstrap the client was built with. Do not modify it.
func (c *Client) Bootstrap() *Bootstrap { return c.bs }

// Connected reports whether the ADS streams are up and each has received
// at least one response since it was (re)opened. With federation there is
// one stream per distinct server list in use; all must be up.
func (c *Client) Connected() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || len(c.channels) == 0 {
		return false
	}
	for _, a := range c.channels {
		if !a.connected.Load() {
			return false
		}
	}
	return true
}

// Close stops the ADS streams and waits for them and for a callback in
// progress. Pending callbacks are dropped. It must not be called from a watch
// callback. Close is idempotent.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	for _, m := range c.watches {
		for _, st := range m {
			stopTimer(st)
		}
	}
	channels := slices.Collect(maps.Values(c.channels))
	for _, a := range channels {
		for k := range a.types {
			a.types[k].stopResubscribe()
		}
		a.cancel()
	}
	c.mu.Unlock()

	c.wg.Wait()
	// Each stream closed its connection as it ended.
	for _, a := range channels {
		a.connected.Store(false)
	}
	if c.cache != nil {
		c.cache.close()
	}
	c.meter.close()
	c.events.close()
	return nil
}

// WatchListener watches the LDS resource name. See the package docs for
// the delivery guarantees; cancel is idempotent.
func (c *Client) WatchListener(name string, fn func(Event[*Listener])) (cancel func()) {
	return watchTyped(c, kindListener, name, fn)
}

// WatchRouteConfig watches the RDS resource name.
func (c *Client) WatchRouteConfig(name string, fn func(Event[*RouteConfig])) (cancel func()) {
	return watchTyped(c, kindRouteConfig, name, fn)
}

// WatchCluster watches the CDS resource name.
func (c *Client) WatchCluster(name string, fn func(Event[*Cluster])) (cancel func()) {
	return watchTyped(c, kindCluster, name, fn)
}

// WatchEndpoints watches the EDS resource name.
func (c *Client) WatchEndpoints(name string, fn func(Event[*Endpoints])) (cancel func()) {
	return watchTyped(c, kindEndpoints, name, fn)
}

func watchTyped[T any](c *Client, kind resourceKind, name string, fn func(Event[T])) func() {
	return c.watch(kind, name, func(ev rawEvent) {
		v, _ := ev.value.(T)
		fn(Event[T]{Resource: v, Err: ev.err, NotFound: ev.notFound})
	})
}

func (c *Client) watch(kind resourceKind, name string, fn func(rawEvent)) func() {
	w := &watcher{fn: fn}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		c.log.Warn("xds: watch on a closed client", "type", c.kinds[kind].name, "name", name)
		return func() {}
	}
	canonical, set, err := c.routeName(kind, name)
	if err != nil {
		c.log.Warn("xds: cannot watch resource", "type", c.kinds[kind].name, "name", name, "error", err)
		c.deliverLocked(w, rawEvent{err: err})
		c.mu.Unlock()
		return func() { w.cancelled.Store(true) }
	}
	name = canonical
	st := c.watches[kind][name]
	switch {
	case st == nil:
		st = &resourceState{watchers: map[*watcher]struct{}{}, channel: set}
		c.watches[kind][name] = st
		c.subscriptionChangedLocked(kind, st)
	case st.retired:
		st.retired = false
		st.channel = set
		c.subscriptionChangedLocked(kind, st)
	}
	st.watchers[w] = struct{}{}
	switch {
	case st.hasValue:
		c.deliverLocked(w, rawEvent{value: st.value})
	case st.notFound:
		c.deliverLocked(w, rawEvent{notFound: true})
	case st.nackErr != nil:
		// Rejected before it was ever good: a late watcher hears why at
		// once, as the early ones did, instead of waiting for nothing.
		c.deliverLocked(w, rawEvent{err: fmt.Errorf("%w: %w", ErrResourceRejected, st.nackErr)})
	}
	c.mu.Unlock()

	var once sync.Once
	return func() {
		once.Do(func() {
			w.cancelled.Store(true)
			c.unwatch(kind, name, w)
		})
	}
}

func (c *Client) unwatch(kind resourceKind, name string, w *watcher) {
	c.mu.Lock()
	defer c.mu.Unlock()
	st := c.watches[kind][name]
	if st == nil {
		return
	}
	delete(st.watchers, w)
	if len(st.watchers) > 0 {
		return
	}
	stopTimer(st)
	if st.hasValue {
		st.retired = true
	} else {
		delete(c.watches[kind], name)
	}
	if !c.closed {
		c.subscriptionChangedLocked(kind, st)
	}
}

// subscriptionChangedLocked starts the ADS stream of st's server set if
// needed and has it send kind's new set of names.
func (c *Client) subscriptionChangedLocked(kind resourceKind, st *resourceState) {
	a := c.channels[st.channel]
	if a == nil {
		set := c.serverSets[st.channel]
		var err error
		if set == nil {
			err = fmt.Errorf("xds: %s: no server set for the resource", c.kinds[kind].name)
		} else {
			a, err = newADSChannel(c, set)
		}
		if err != nil {
			// Only a server_uri that does not parse fails here, which the
			// watchers must hear about; retrying would not help.
			c.log.Error("xds: cannot create channel", "error", err)
			for _, other := range c.watches[kind] {
				if other.channel != st.channel {
					continue
				}
				for w := range other.watchers {
					c.deliverLocked(w, rawEvent{err: err})
				}
			}
			return
		}
		c.channels[st.channel] = a
		ctx, cancel := context.WithCancel(context.Background())
		a.cancel = cancel
		c.wg.Add(1)
		go a.run(ctx)
	}
	a.namesChangedLocked(kind)
}

// deliverLocked queues ev for w; callbacks run on the serializer, never
// under c.mu, and are skipped if w was cancelled meanwhile.
func (c *Client) deliverLocked(w *watcher, ev rawEvent) {
	c.events.schedule(func() {
		if !w.cancelled.Load() {
			w.fn(ev)
		}
	})
}

func (c *Client) notifyLocked(st *resourceState, ev rawEvent) {
	for w := range st.watchers {
		c.deliverLocked(w, ev)
	}
}

func stopTimer(st *resourceState) {
	if st.timer != nil {
		st.timer.Stop()
		st.timer = nil
	}
}

// markRequestedLocked records that kind's names went out on a's stream and
// starts the does-not-exist timer of each resource not received yet.
func (c *Client) markRequestedLocked(a *adsChannel, kind resourceKind) {
	for name, st := range c.watches[kind] {
		if st.retired || st.channel != a.set.key {
			continue
		}
		st.requested = true
		// A rejected resource was received: the NACK that re-requests it
		// must not start a timer that would report it missing.
		if st.hasValue || st.notFound || st.nackErr != nil || st.timer != nil || c.opts.resourceTimeout <= 0 {
			continue
		}
		st.timer = time.AfterFunc(c.opts.resourceTimeout, func() { c.resourceTimedOut(kind, name, st) })
	}
}

func (c *Client) resourceTimedOut(kind resourceKind, name string, st *resourceState) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || c.watches[kind][name] != st || st.hasValue || st.notFound || st.timer == nil {
		return
	}
	st.timer = nil
	c.log.Info("xds: resource not received in time, reporting it does not exist", "type", c.kinds[kind].name, "name", name)
	c.setNotFoundLocked(kind, name, st, "was not received within the resource timeout")
}
