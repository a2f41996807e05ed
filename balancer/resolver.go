package balancer

import (
	"errors"
	"fmt"
	"strings"

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
// Pass it to each channel with grpc.WithResolvers, or better, pass the
// channel DialOptions; it is never registered globally. Each channel it
// builds watches the listener "host:port" (see WithListenerNameTemplate),
// its route config, and the clusters and endpoints the routes name, and
// hands the LB policy one immutable snapshot whenever all of them are known.
func NewResolverBuilder(client XDSClient, opts ...Option) *ResolverBuilder {
	cfg := newConfig(opts)
	return &ResolverBuilder{client: client, cfg: cfg, channels: newChannelRegistry(), faults: &faultInjector{clock: cfg.clock}}
}

// ResolverBuilder is the resolver.Builder of the "mesh" scheme; see
// NewResolverBuilder.
type ResolverBuilder struct {
	client XDSClient
	cfg    *config
	// channels are the LB policies of live channels, for ClusterStates.
	channels *channelRegistry
	faults   *faultInjector
}

// Scheme returns Scheme.
func (b *ResolverBuilder) Scheme() string { return Scheme }

// Build starts resolving target for one channel.
func (b *ResolverBuilder) Build(target resolver.Target, cc resolver.ClientConn, _ resolver.BuildOptions) (resolver.Resolver, error) {
	return b.build(target, cc, nil)
}

// linkedBuilder is the resolver.Builder of one channel made with
// DialOptions: its LB policy publishes routing tables to link, where the
// channel's interceptors read them.
type linkedBuilder struct {
	b    *ResolverBuilder
	link *channelLink
}

func (l *linkedBuilder) Scheme() string { return Scheme }

func (l *linkedBuilder) Build(target resolver.Target, cc resolver.ClientConn, _ resolver.BuildOptions) (resolver.Resolver, error) {
	return l.b.build(target, cc, l.link)
}

func (b *ResolverBuilder) build(target resolver.Target, cc resolver.ClientConn, link *channelLink) (resolver.Resolver, error) {
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
	r := &xdsResolver{link: link}
	r.agg = newAggregator(b.client, b.cfg, authority, b.cfg.logger.With("target", target.String()),
		func(snap *snapshot) {
			snap.channels = b.channels
			snap.link = link
			err := cc.UpdateState(resolver.State{ServiceConfig: sc, Attributes: attributes.New(snapshotKey{}, snap)})
			if err != nil {
				r.agg.logger.Debug("channel did not accept the snapshot", "error", err)
			}
		},
		func(err error) {
			link.resolverError(err)
			cc.ReportError(err)
		})
	return r, nil
}

// xdsResolver is the gRPC face of an aggregator.
type xdsResolver struct {
	agg  *aggregator
	link *channelLink
}

// ResolveNow is a no-op: the control plane pushes every change.
func (r *xdsResolver) ResolveNow(resolver.ResolveNowOptions) {}

// Close cancels every watch and waits for the aggregator's goroutine.
func (r *xdsResolver) Close() {
	r.agg.Close()
	r.link.resolverClosed()
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
