package telemetry

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"math/rand/v2"
	"sync"

	"mesh/internal/routeinfo"
)

// RouteInfo says where the router sent a request, for span attributes,
// access logs and response flags.
type RouteInfo struct {
	// Cluster is the upstream cluster, e.g.
	// "outbound|8080|v2|payments.shop.svc.cluster.local".
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

type routeValueKey struct{}

// WithRouteInfo returns ctx carrying info, for a caller that knows the route
// before the request starts. SetRouteInfo, called during the request,
// overrides it.
func WithRouteInfo(ctx context.Context, info RouteInfo) context.Context {
	return context.WithValue(ctx, routeValueKey{}, info)
}

// SetRouteInfo records where a request went, in the request context a
// telemetry handler tagged: the balancer does so with the picker's
// PickInfo.Ctx (gRPC) or the request's context (net/http, inside Transport).
// A later call replaces an earlier one. It reports false, and records
// nothing, when no handler tagged ctx.
func SetRouteInfo(ctx context.Context, info RouteInfo) bool {
	return routeinfo.Set(ctx, &routeinfo.Info{
		Cluster: info.Cluster, Subset: info.Subset, Endpoint: info.Endpoint,
		Retries: info.Retries, ResponseFlags: info.ResponseFlags,
	})
}

// routeInfo returns what the balancer (or SetRouteInfo) recorded in slot,
// or else what WithRouteInfo put in ctx.
func routeInfo(ctx context.Context, slot *routeinfo.Slot) RouteInfo {
	if slot != nil {
		if p := slot.Load(); p != nil {
			return RouteInfo{
				Cluster: p.Cluster, Subset: p.Subset, Endpoint: p.Endpoint,
				Retries: p.Retries, ResponseFlags: p.ResponseFlags,
			}
		}
	}
	info, _ := ctx.Value(routeValueKey{}).(RouteInfo)
	return info
}

type requestIDKey struct{}

// WithRequestID returns ctx carrying id, which client handlers send as
// x-request-id instead of generating one.
func WithRequestID(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, requestIDKey{}, id)
}

// RequestIDFromContext returns the x-request-id of the request ctx belongs
// to: the one a server handler received (or generated), or one set with
// WithRequestID. Calls a service method makes with its context carry the
// same ID onward, as Envoy sidecars do.
func RequestIDFromContext(ctx context.Context) (string, bool) {
	id, _ := ctx.Value(requestIDKey{}).(string)
	return id, id != ""
}

// newRequestID returns a random (version 4) UUID, the form Envoy generates.
// The ID correlates logs and is no secret, so the runtime's per-thread
// generator serves: no lock and no system call per request.
func newRequestID() string {
	var out [requestIDLen]byte
	writeRequestID(&out)
	return string(out[:])
}

// requestIDLen is the length of a UUID's text.
const requestIDLen = 36

// writeRequestID writes a new request ID's text into out.
func writeRequestID(out *[requestIDLen]byte) {
	var b [16]byte
	binary.LittleEndian.PutUint64(b[:8], rand.Uint64())
	binary.LittleEndian.PutUint64(b[8:], rand.Uint64())
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	hex.Encode(out[0:8], b[0:4])
	out[8] = '-'
	hex.Encode(out[9:13], b[4:6])
	out[13] = '-'
	hex.Encode(out[14:18], b[6:8])
	out[18] = '-'
	hex.Encode(out[19:23], b[8:10])
	out[23] = '-'
	hex.Encode(out[24:], b[10:])
}

// requestIDsPerBatch is how many request IDs share one string allocation.
// A live ID keeps its whole batch (576 bytes) from being collected.
const requestIDsPerBatch = 16

// requestIDBatch is the text of requestIDsPerBatch IDs, handed out one
// slice at a time.
type requestIDBatch struct {
	text string
	next int
}

// requestIDSource makes request IDs as newRequestID does, one string
// allocation per batch instead of one per ID. A batch is used by one
// goroutine at a time: it is out of the pool while an ID is cut from it.
type requestIDSource struct{ batches sync.Pool }

func (s *requestIDSource) next() string {
	b, _ := s.batches.Get().(*requestIDBatch)
	if b == nil {
		b = &requestIDBatch{next: requestIDsPerBatch}
	}
	if b.next == requestIDsPerBatch {
		var buf [requestIDsPerBatch * requestIDLen]byte
		for i := range requestIDsPerBatch {
			writeRequestID((*[requestIDLen]byte)(buf[i*requestIDLen:]))
		}
		b.text, b.next = string(buf[:]), 0
	}
	id := b.text[b.next*requestIDLen : (b.next+1)*requestIDLen]
	b.next++
	s.batches.Put(b)
	return id
}
