package balancer

import (
	"cmp"
	"slices"
	"sync"
	"time"
)

// ClusterState is one cluster of one channel as the balancer routes to it
// right now, for admin pages such as /debug/clusters. It is a copy: later
// changes do not show in it.
type ClusterState struct {
	// Channel is the authority ("host:port") the channel routes. Two gRPC
	// channels to one target each list their clusters.
	Channel string
	Name    string
	// InFlight counts the requests outstanding to the cluster (what
	// circuit breaking limits).
	InFlight  int64
	Endpoints []EndpointState
}

// EndpointState is one endpoint of a ClusterState: every usable endpoint of
// every priority the cluster's EDS resource lists, in priority order.
type EndpointState struct {
	Address string
	// Locality is "region/zone/sub_zone", trailing empty parts dropped.
	Locality string
	// Weight is the endpoint's load_balancing_weight (1 when unset).
	Weight uint32
	// Health is the connection state: "READY", "CONNECTING",
	// "TRANSIENT_FAILURE" or "IDLE". For the RoundTripper, whose
	// connections come and go per request, it is the outcome of the last
	// dial: IDLE before any, CONNECTING during the first.
	Health string
	// Ejected is set while outlier detection keeps the endpoint out of
	// rotation; it returns at the first detection interval at or after
	// EjectedUntil.
	Ejected      bool
	EjectedUntil time.Time
	InFlight     int64
}

// ClusterStates returns the clusters of every live channel the builder
// resolves, read from their published routing tables, sorted by channel
// and cluster name. It takes each channel's lock briefly and never slows a
// pick.
func (b *ResolverBuilder) ClusterStates() []ClusterState {
	var out []ClusterState
	for _, rb := range b.channels.list() {
		out = append(out, rb.clusterStates()...)
	}
	sortClusterStates(out)
	return out
}

// ClusterStates returns the clusters of every authority rt has routed to,
// read from their published routing tables, sorted by channel and cluster
// name.
func (rt *RoundTripper) ClusterStates() []ClusterState {
	var out []ClusterState
	for _, ch := range rt.liveChannels() {
		out = append(out, ch.clusterStates()...)
	}
	sortClusterStates(out)
	return out
}

func sortClusterStates(s []ClusterState) {
	slices.SortStableFunc(s, func(a, b ClusterState) int {
		if c := cmp.Compare(a.Channel, b.Channel); c != 0 {
			return c
		}
		return cmp.Compare(a.Name, b.Name)
	})
}

// channelRegistry tracks the LB policies of one ResolverBuilder's live
// channels. gRPC builds LB policies through the global registry, so each
// one finds its builder's registry in the snapshots the resolver sends it.
type channelRegistry struct {
	mu       sync.Mutex
	balancer map[*routerBalancer]bool
}

func newChannelRegistry() *channelRegistry {
	return &channelRegistry{balancer: map[*routerBalancer]bool{}}
}

func (g *channelRegistry) add(b *routerBalancer) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.balancer[b] = true
}

func (g *channelRegistry) remove(b *routerBalancer) {
	g.mu.Lock()
	defer g.mu.Unlock()
	delete(g.balancer, b)
}

// list copies the registry so that callers take no balancer's lock while
// holding the registry's.
func (g *channelRegistry) list() []*routerBalancer {
	g.mu.Lock()
	defer g.mu.Unlock()
	out := make([]*routerBalancer, 0, len(g.balancer))
	for b := range g.balancer {
		out = append(out, b)
	}
	return out
}

func (ch *httpChannel) clusterStates() []ClusterState { return ch.pub.clusterStates(ch.authority) }

// ejections returns the addresses outlier detection ejects now, with the
// earliest time each may return. A nil detector ejects nothing.
func (d *outlierDetector) ejections() map[string]time.Time {
	if d == nil {
		return nil
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.cfg == nil {
		return nil
	}
	var out map[string]time.Time
	maxEjection := max(d.cfg.BaseEjectionTime, d.cfg.MaxEjectionTime)
	for addr, s := range d.stats {
		if !s.ejected.Load() {
			continue
		}
		// As evaluateLocked computes it.
		ejection := d.cfg.BaseEjectionTime * time.Duration(s.multiplier)
		if ejection > maxEjection || ejection < 0 {
			ejection = maxEjection
		}
		if out == nil {
			out = map[string]time.Time{}
		}
		out[addr] = s.ejectedAt.Add(ejection)
	}
	return out
}
