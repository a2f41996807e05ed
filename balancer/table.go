package balancer

import (
	"fmt"
	"slices"
	"sync/atomic"

	"google.golang.org/grpc/connectivity"

	"mesh/xdsclient"
)

// This file is the pure half of the routing core that the gRPC LB policy
// (lb.go) and the RoundTripper (roundtripper.go) share: a snapshot becomes a
// plan (newPlan), and a plan plus the state of its connections becomes an
// immutable routing table (buildTable). publisher.go decides when a table
// is published.

// scKey identifies a connection to an endpoint (a gRPC SubConn, an HTTP
// connection pool). TLS is part of it so that a change of a cluster's TLS
// settings brings new connections while the old ones drain.
type scKey struct {
	cluster string
	addr    string
	tls     *xdsclient.UpstreamTLS
}

// plan is a snapshot resolved into connection keys.
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

// tlsCache keeps each cluster's TLS settings as connections use them: a new
// Cluster with equal settings keeps the old pointer, so its connections
// (keyed by it) are kept.
type tlsCache map[string]*xdsclient.UpstreamTLS

func (c tlsCache) canonical(cluster string, tls *xdsclient.UpstreamTLS) *xdsclient.UpstreamTLS {
	if old, ok := c[cluster]; ok && equalTLS(old, tls) {
		return old
	}
	c[cluster] = tls
	return tls
}

// newPlan resolves a snapshot into the connections each cluster uses.
func newPlan(snap *snapshot, tls tlsCache) *plan {
	r := snap.router
	p := &plan{router: r, clusters: make([]planCluster, len(r.clusters))}
	for i, name := range r.clusters {
		pc := &p.clusters[i]
		pc.name = name
		pc.carriesTraffic = r.carriesTraffic(i)
		cluster := snap.clusters[name]
		if cluster == nil {
			pc.missing = snap.unusable(name, nil)
			continue
		}
		pc.maxRequests = cluster.MaxRequests
		pc.lb = lbConfigOf(cluster)
		pc.outlier = cluster.OutlierDetection
		canon := tls.canonical(name, cluster.TLS)
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
			pc.keys = append(pc.keys, scKey{cluster: name, addr: wa.addr, tls: canon})
		}
	}
	return p
}

// addrs returns the addresses of pc's endpoints, in priority order.
func (pc *planCluster) addrs() []string {
	out := make([]string, 0, len(pc.keys))
	for _, k := range pc.keys {
		out = append(out, k.addr)
	}
	return out
}

// routeTable is what one pick needs, for connections whose pickable form is
// P; immutable once published except for the counters it points to.
type routeTable[P any] struct {
	router   *Router
	clusters []routeCluster[P] // indexed like router.clusters
	// channelID is what ring_hash routes with a channel ID hash policy hash.
	channelID uint64
	// err, when set, fails every pick: the channel has nothing to route with.
	err error
	// replaced is closed when another table takes this one's place, which
	// wakes the HTTP requests waiting for their cluster.
	replaced chan struct{}
	// origin is the publisher that made the table.
	origin *publisherID
}

type routeCluster[P any] struct {
	name string
	// ready are the endpoints a pick chooses among; chooser's counters and
	// stats[i] (nil without outlier detection) belong to ready[i].
	ready      []P
	stats      []*endpointStats
	chooser    endpointChooser
	connecting bool
	failErr    error
	state      *clusterState
}

// connState is what table building reads of one connection.
type connState struct {
	state connectivity.State
	// failedSinceReady keeps a connection that failed counted as failed
	// while it reconnects, so priority failover does not flap (gRPC's
	// sticky TRANSIENT_FAILURE).
	failedSinceReady bool
	lastErr          error
}

// tableInput is, for one cluster of a plan, the live state the table is
// built from.
type tableInput[P any] struct {
	state *clusterState
	// stats by address; nil without outlier detection.
	stats map[string]*endpointStats
	// conn returns the connection of key k, its state and its pickable
	// form bound to state and st; ok is false when there is none.
	conn func(k scKey, st *endpointStats) (cs connState, active *atomic.Int64, pick P, ok bool)
}

// buildTable turns a plan and the live state of its connections into a
// routing table and the channel's aggregate connectivity state. Per
// cluster, the first priority with a ready endpoint serves; one still
// connecting holds traffic back (calls wait); one whose endpoints all
// failed or are ejected fails over to the next (gRFC A27).
func buildTable[P any](p *plan, channelID uint64, input func(i int) tableInput[P]) (*routeTable[P], connectivity.State) {
	t := &routeTable[P]{router: p.router, clusters: make([]routeCluster[P], len(p.clusters)), channelID: channelID}
	anyReady, anyConnecting := false, false
	for i := range p.clusters {
		pc := &p.clusters[i]
		in := input(i)
		tc := &t.clusters[i]
		tc.name = pc.name
		tc.state = in.state
		var lastErr error
		var readyAddrs []string
		var active []*atomic.Int64
		var weights []float64
		ejected := 0
		for j, k := range pc.keys {
			if j > 0 && pc.endpoints[j].priority != pc.endpoints[j-1].priority && (len(tc.ready) > 0 || tc.connecting) {
				break
			}
			st := in.stats[k.addr]
			cs, act, pick, ok := in.conn(k, st)
			if !ok {
				continue
			}
			switch cs.state {
			case connectivity.Ready:
				if st != nil && st.ejected.Load() {
					ejected++
					continue
				}
				tc.ready = append(tc.ready, pick)
				tc.stats = append(tc.stats, st)
				readyAddrs = append(readyAddrs, k.addr)
				active = append(active, act)
				weights = append(weights, pc.endpoints[j].weight)
			case connectivity.TransientFailure:
				if cs.lastErr != nil {
					lastErr = cs.lastErr
				}
			default:
				if cs.failedSinceReady {
					if cs.lastErr != nil {
						lastErr = cs.lastErr
					}
					continue
				}
				tc.connecting = true
			}
		}
		if len(tc.ready) > 0 {
			tc.connecting = false
		}
		if in.stats == nil {
			tc.stats = nil
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
	switch {
	case anyReady:
		return t, connectivity.Ready
	case anyConnecting:
		return t, connectivity.Connecting
	default:
		return t, connectivity.TransientFailure
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
