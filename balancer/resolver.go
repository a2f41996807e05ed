package balancer

import (
	"errors"
	"fmt"
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
