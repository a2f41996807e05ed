// Package routeinfo carries the router's decision for one request (cluster,
// subset, endpoint) from the balancer, which makes it, to telemetry, which
// reports it in spans, access logs and response flags. Telemetry puts an
// empty Slot in the request's context before the pick; the balancer stores
// a prebuilt *Info into it, so the hot path allocates nothing.
package routeinfo

import (
	"context"
	"strings"
	"sync/atomic"
)

// Info says where the router sent a request.
type Info struct {
	// Cluster is the upstream cluster, e.g. "outbound|8080|v2|payments.shop.svc.cluster.local".
	Cluster string
	// Subset is the DestinationRule subset within the service, e.g. "v2".
	Subset string
	// Endpoint is the address picked, "ip:port".
	Endpoint string
	// Retries counts the attempts made before this one.
	Retries int
	// ResponseFlags holds Envoy response flags the router raised, such as
	// "UH" (no healthy upstream) or "NR" (no route); empty means none.
	ResponseFlags string
}

// New returns the Info for an endpoint of cluster, with the subset taken
// from an istiod-style cluster name ("outbound|port|subset|host").
func New(cluster, endpoint string) *Info {
	info := &Info{Cluster: cluster, Endpoint: endpoint}
	if parts := strings.Split(cluster, "|"); len(parts) == 4 {
		info.Subset = parts[2]
	}
	return info
}

// Slot is one request's place for the decision; the pick and the reading
// may run on different goroutines, so it is atomic.
type Slot struct{ info atomic.Pointer[Info] }

// Store records info; a later Store replaces an earlier one.
func (s *Slot) Store(info *Info) { s.info.Store(info) }

// Load returns what was stored, or nil.
func (s *Slot) Load() *Info { return s.info.Load() }

// SlotKey is the context key of the Slot; it is exported so that a
// context type of telemetry's own can answer for it.
type SlotKey struct{}

// WithSlot returns ctx carrying slot.
func WithSlot(ctx context.Context, slot *Slot) context.Context {
	return context.WithValue(ctx, SlotKey{}, slot)
}

// SlotFrom returns the slot in ctx, or nil.
func SlotFrom(ctx context.Context) *Slot {
	if ctx == nil {
		return nil
	}
	s, _ := ctx.Value(SlotKey{}).(*Slot)
	return s
}

// Set stores info in ctx's slot, if it has one, and reports whether it did.
func Set(ctx context.Context, info *Info) bool {
	s := SlotFrom(ctx)
	if s == nil {
		return false
	}
	s.Store(info)
	return true
}
