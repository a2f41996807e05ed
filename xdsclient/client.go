package xdsclient

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	corepb "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
)

// Sentinels wrapped by the Err of watch events, to tell a rejected
// resource from a connectivity problem. Either way the last good version
// stays in force.
var (
	// ErrResourceRejected: the control plane sent an invalid version of
	// the resource; it was NACKed.
	ErrResourceRejected = errors.New("xds: resource rejected")
	// ErrStreamFailed: the ADS stream broke; the client is reconnecting.
	ErrStreamFailed = errors.New("xds: ADS stream failed")
	// ErrResourceNotFound: the server does not have the resource. It is
	// wrapped by the Error of a DOES_NOT_EXIST entry in Dump.
	ErrResourceNotFound = errors.New("xds: resource does not exist")
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
}

// Client is an xDS client: one ADS stream per xDS server, shared by every
// watch, with a cache of the last good version of each resource.
type Client struct {
	bs     *Bootstrap
	opts   options
	log    *slog.Logger
	kinds  [numKinds]kindInfo
	dc     *decodeContext
	node   *corepb.Node
	creds  []credentials.TransportCredentials // per xds_servers entry
	events *serializer
	now    func() time.Time
	meter  *clientMetrics
	cache  *persister // nil without WithCache

	connected atomic.Bool
	wg        sync.WaitGroup
	stop      chan struct{}

	mu      sync.Mutex
	closed  bool
	watches [numKinds]map[string]*resourceState
	// ads is the stream to the first xds_server, started on the first
	// watch. Federation (gRFC A47) will add one per authority's server.
	ads *adsChannel
	// loggedIgnored remembers which ignored fields were logged, so each
	// is logged once per resource.
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
	creds := make([]credentials.TransportCredentials, len(bs.Servers))
	for i, s := range bs.Servers {
		if creds[i], err = transportCredentials(s, fmt.Sprintf("xds_servers[%d]", i)); err != nil {
			return nil, err
		}
	}
	c := &Client{
		bs:     bs,
		opts:   o,
		log:    o.logger,
		kinds:  kinds(),
		dc:     &decodeContext{providers: bs.CertificateProviders, logger: o.logger},
		node:   node,
		creds:  creds,
		events: newSerializer(),
		now:    time.Now,
		stop:   make(chan struct{}),

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

func transportCredentials(s ServerConfig, path string) (credentials.TransportCredentials, error) {
	for i, cc := range s.ChannelCreds {
		switch cc.Type {
		case CredsInsecure:
			return insecure.NewCredentials(), nil
		case CredsTLS:
			cfg, err := parseTLSCredsConfig(cc.Config)
			if err != nil {
				return nil, fmt.Errorf("bootstrap: %s.channel_creds[%d].config: %w", path, i, err)
			}
			tc := &tls.Config{MinVersion: tls.VersionTLS12}
			if cfg.CACertificateFile != "" {
				pem, err := os.ReadFile(cfg.CACertificateFile)
				if err != nil {
					return nil, fmt.Errorf("bootstrap: %s.channel_creds[%d].config.ca_certificate_file: %w", path, i, err)
				}
				pool := x509.NewCertPool()
				if !pool.AppendCertsFromPEM(pem) {
					return nil, fmt.Errorf("bootstrap: %s.channel_creds[%d].config.ca_certificate_file: no PEM certificates in %s", path, i, cfg.CACertificateFile)
				}
				tc.RootCAs = pool
			}
			if cfg.CertificateFile != "" {
				cert, err := tls.LoadX509KeyPair(cfg.CertificateFile, cfg.PrivateKeyFile)
				if err != nil {
					return nil, fmt.Errorf("bootstrap: %s.channel_creds[%d].config.certificate_file: %w", path, i, err)
				}
				tc.Certificates = []tls.Certificate{cert}
			}
			return credentials.NewTLS(tc), nil
		}
	}
	return nil, fmt.Errorf("bootstrap: %s.channel_creds: server %q has no supported type", path, s.URI)
}

// Bootstrap returns the bootstrap the client was built with. Do not modify it.
func (c *Client) Bootstrap() *Bootstrap { return c.bs }

// Node returns the node identity the client sends to the control plane.
func (c *Client) Node() Node { return c.bs.Node }

// Connected reports whether the ADS stream is up and has received at least
// one response since it was (re)opened.
func (c *Client) Connected() bool { return c.connected.Load() }

// Close stops the ADS stream and the callback goroutine and waits for
// them. Pending callbacks are dropped. It must not be called from a watch
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
	ads := c.ads
	close(c.stop)
	c.mu.Unlock()

	c.wg.Wait()
	var err error
	if ads != nil {
		err = ads.closeConns()
	}
	if c.cache != nil {
		c.cache.close()
	}
	c.meter.close()
	c.events.close()
	c.connected.Store(false)
	return err
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
	st := c.watches[kind][name]
	switch {
	case st == nil:
		st = &resourceState{watchers: map[*watcher]struct{}{}}
		c.watches[kind][name] = st
		c.subscriptionChangedLocked(kind)
	case st.retired:
		st.retired = false
		c.subscriptionChangedLocked(kind)
	}
	st.watchers[w] = struct{}{}
	switch {
	case st.hasValue:
		c.deliverLocked(w, rawEvent{value: st.value})
	case st.notFound:
		c.deliverLocked(w, rawEvent{notFound: true})
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
		c.subscriptionChangedLocked(kind)
	}
}

// subscriptionChangedLocked starts the ADS stream if needed and has it
// send kind's new set of names.
func (c *Client) subscriptionChangedLocked(kind resourceKind) {
	if c.ads == nil {
		ads, err := newADSChannel(c)
		if err != nil {
			// grpc.NewClient fails only on a malformed target, which the
			// watchers must hear about; retrying would not help.
			c.log.Error("xds: cannot create channel", "server", c.bs.Servers[0].URI, "error", err)
			for _, st := range c.watches[kind] {
				for w := range st.watchers {
					c.deliverLocked(w, rawEvent{err: err})
				}
			}
			return
		}
		c.ads = ads
		c.wg.Add(1)
		go ads.run()
	}
	c.ads.namesChangedLocked(kind)
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

// markRequestedLocked records that kind's names went out on the stream and
// starts the does-not-exist timer of each resource still without a value.
func (c *Client) markRequestedLocked(kind resourceKind) {
	for name, st := range c.watches[kind] {
		if st.retired {
			continue
		}
		st.requested = true
		if st.hasValue || st.notFound || st.timer != nil || c.opts.resourceTimeout <= 0 {
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
