package controlplane

import (
	"cmp"
	"maps"
	"slices"
	"strings"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
)

// syncState is what one stream's node has ACKed and NACKed, per type URL.
// Its zero value is ready; the server's mutex guards it.
type syncState struct {
	lastSeen time.Time
	acked    map[string]string // type URL -> version ACKed (state of the world)
	nack     map[string]string // type URL -> the error of its latest NACK
}

// record notes one request: an ACK names the version the node now runs, a
// NACK carries the node's error; either way the node was seen.
func (st *syncState) record(typeURL string, sotw *discovery.DiscoveryRequest, delta *discovery.DeltaDiscoveryRequest) {
	st.lastSeen = time.Now()
	if st.acked == nil {
		st.acked, st.nack = map[string]string{}, map[string]string{}
	}
	var nack string
	switch {
	case sotw != nil:
		if sotw.GetErrorDetail() != nil {
			nack = sotw.GetErrorDetail().GetMessage()
		} else if sotw.GetResponseNonce() != "" {
			st.acked[typeURL] = sotw.GetVersionInfo()
		}
	case delta != nil:
		nack = delta.GetErrorDetail().GetMessage()
	}
	if nack != "" {
		st.nack[typeURL] = nack
	} else {
		delete(st.nack, typeURL)
	}
}

// ProxyStatus is one connected workload's xDS sync state.
//
// # Experimental
type ProxyStatus struct {
	Node     string       `json:"node"`
	Workload string       `json:"workload"` // namespace/name
	Identity string       `json:"identity,omitempty"`
	Delta    bool         `json:"delta"`
	LastSeen time.Time    `json:"last_seen"`
	Types    []TypeStatus `json:"types"`
}

// TypeStatus is one resource type of a ProxyStatus.
type TypeStatus struct {
	Type  string `json:"type"` // LDS, RDS, CDS, EDS, SDS
	Sent  string `json:"sent,omitempty"`
	Acked string `json:"acked,omitempty"`
	// State is SYNCED (ACKed what was sent last), STALE (sent, not yet
	// ACKed), NACKED (rejected; Error says why) or SENT (delta streams, which
	// carry no versions).
	State string `json:"state"`
	Error string `json:"error,omitempty"`
}

var xdsTypeNames = map[string]string{
	"type.googleapis.com/envoy.config.listener.v3.Listener":                "LDS",
	"type.googleapis.com/envoy.config.route.v3.RouteConfiguration":         "RDS",
	"type.googleapis.com/envoy.config.cluster.v3.Cluster":                  "CDS",
	"type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment":   "EDS",
	"type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret": "SDS",
}

// ProxyStatus lists every connected stream's workload with, per resource
// type, the version sent last, the version ACKed and the latest NACK,
// ordered by workload and node, as istioctl proxy-status orders its rows:
// the order streams connected in changes with every restart.
//
// # Experimental
func (s *Server) ProxyStatus() []ProxyStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []ProxyStatus
	keys := slices.Collect(maps.Keys(s.streams))
	sortStreamKeys(keys)
	for _, k := range keys {
		n := s.streams[k]
		ps := ProxyStatus{Node: n.id, Workload: n.namespace + "/" + n.workloadName, Delta: k.delta, LastSeen: n.sync.lastSeen.UTC(), Types: []TypeStatus{}}
		if n.proof != nil {
			ps.Identity = n.proof.spiffeID(s.trustDomain)
		}
		types := map[string]bool{}
		for t := range n.lastVersion {
			types[t] = true
		}
		for t := range n.sync.acked {
			types[t] = true
		}
		for t := range n.sync.nack {
			types[t] = true
		}
		order := []string{"LDS", "RDS", "CDS", "EDS", "SDS"}
		sorted := slices.SortedFunc(maps.Keys(types), func(a, b string) int {
			ia, ib := slices.Index(order, xdsTypeNames[a]), slices.Index(order, xdsTypeNames[b])
			if ia != ib {
				return ia - ib
			}
			return strings.Compare(a, b)
		})
		for _, t := range sorted {
			ts := TypeStatus{Type: xdsTypeNames[t], Sent: n.lastVersion[t], Acked: n.sync.acked[t], Error: n.sync.nack[t]}
			if ts.Type == "" {
				ts.Type = t[strings.LastIndex(t, ".")+1:]
			}
			switch {
			case ts.Error != "":
				ts.State = "NACKED"
			case k.delta:
				ts.State = "SENT"
			case ts.Sent == ts.Acked:
				ts.State = "SYNCED"
			default:
				ts.State = "STALE"
			}
			ps.Types = append(ps.Types, ts)
		}
		out = append(out, ps)
	}
	slices.SortStableFunc(out, func(a, b ProxyStatus) int {
		return cmp.Or(strings.Compare(a.Workload, b.Workload), strings.Compare(a.Node, b.Node))
	})
	return out
}
