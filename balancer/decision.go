package balancer

import (
	"context"
	"sync"
	"sync/atomic"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"mesh/xdsclient"
)

// A gRPC call is routed once: the channel's interceptor matches it against
// the routing table the channel's LB policy published, picks the weighted
// cluster, and puts that decision in the call's context; the route's
// timeout, retry policy and faults apply from it, and the picker only picks
// an endpoint of the decided cluster. Timeout, retries and cluster thus
// always come from one table, even while a new one is pending.

// channelLink joins one channel's LB policy, which publishes tables to it,
// to the channel's interceptors, which read them; DialOptions makes one per
// channel.
type channelLink struct {
	table atomic.Pointer[grpcTable]
	// known is closed once table is set, or when the resolver closes: a
	// call made before waits for it.
	known     chan struct{}
	knownOnce sync.Once
}

func newChannelLink() *channelLink { return &channelLink{known: make(chan struct{})} }

// store publishes t, from the LB policy.
func (l *channelLink) store(t *grpcTable) {
	if l == nil {
		return
	}
	l.table.Store(t)
	l.knownOnce.Do(func() { close(l.known) })
}

// resolverError lets calls made before any table fail with the resolver's
// error (through the channel) instead of waiting; after a table it is the
// LB policy's to decide.
func (l *channelLink) resolverError(err error) {
	if l == nil {
		return
	}
	l.table.CompareAndSwap(nil, &grpcTable{err: err})
	l.knownOnce.Do(func() { close(l.known) })
}

// resolverClosed releases calls waiting for a first table: the channel is
// closing or going idle, and gRPC handles them from there.
func (l *channelLink) resolverClosed() {
	if l != nil {
		l.knownOnce.Do(func() { close(l.known) })
	}
}

// current returns the published table, waiting for the first one until ctx
// ends; nil when there is none to route with.
func (l *channelLink) current(ctx context.Context, connect func()) (*grpcTable, error) {
	if t := l.table.Load(); t != nil {
		return t, nil
	}
	// A new channel is idle until its first call; start its resolver.
	connect()
	select {
	case <-l.known:
		return l.table.Load(), nil
	case <-ctx.Done():
		return nil, status.FromContextError(ctx.Err()).Err()
	}
}

// routeDecision is one call's route: the table it was made from, the route
// that matched and the cluster chosen (an index in t.clusters).
type routeDecision struct {
	table   *grpcTable
	route   *xdsclient.Route
	cluster int
	// headers are the call's metadata when the router reads headers
	// (matchers, hash policies, faults); nil otherwise.
	headers Headers
}

// decide routes a call to method against t; nil when t cannot route.
func decide(ctx context.Context, t *grpcTable, method string) (*decidedContext, error) {
	if t == nil || t.err != nil {
		return nil, nil
	}
	var headers Headers
	if t.router.needsHeaders || t.router.faultHeaders {
		md, _ := metadata.FromOutgoingContext(ctx)
		headers = MetadataHeaders(md)
	}
	idx, route, err := t.router.pick(method, headers)
	if err != nil {
		return nil, status.Error(codes.Unavailable, err.Error())
	}
	return &decidedContext{Context: ctx, d: routeDecision{table: t, route: route, cluster: idx, headers: headers}}, nil
}

type decisionKey struct{}

// decidedContext carries a call's decision: one allocation per call, the
// context and the decision together.
type decidedContext struct {
	context.Context
	d routeDecision
}

func (c *decidedContext) Value(key any) any {
	if key == (decisionKey{}) {
		return &c.d
	}
	return c.Context.Value(key)
}

func decisionFrom(ctx context.Context) *routeDecision {
	if ctx == nil {
		return nil
	}
	d, _ := ctx.Value(decisionKey{}).(*routeDecision)
	return d
}

// clusterOf returns the cluster of t that carries out d: d's own when d
// was made from t; else the cluster of that name in t, since a table was
// published between the decision and the pick (or the channel restarted
// its LB policy); else d's own cluster, which drains, when d's table came
// from t's publisher. ok is false when d does not apply to t at all.
func (d *routeDecision) clusterOf(t *grpcTable) (c *routeCluster[grpcPick], ok bool) {
	own := &d.table.clusters[d.cluster]
	if d.table == t {
		return own, true
	}
	if i, found := t.router.clusterIndex[own.name]; found {
		return &t.clusters[i], true
	}
	if d.table.origin == t.origin {
		return own, true
	}
	return nil, false
}
