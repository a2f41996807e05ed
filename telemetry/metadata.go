package telemetry

import (
	"context"
	"sort"
	"strings"

	"go.opentelemetry.io/otel/propagation"
	"google.golang.org/grpc/metadata"

	"mesh/internal/incomingmd"
)

// MetadataCarrier adapts gRPC metadata to an OpenTelemetry
// propagation.TextMapCarrier, so any propagator can read or write it:
//
//	propagator.Inject(ctx, telemetry.MetadataCarrier(md))
//	ctx = propagator.Extract(ctx, telemetry.MetadataCarrier(md))
//
// Keys are lower-cased on Set, as HTTP/2 requires, and matched without regard
// to case on Get. Set on a nil MetadataCarrier does nothing.
type MetadataCarrier metadata.MD

var _ propagation.TextMapCarrier = MetadataCarrier(nil)

// Get returns the first value stored under key, or "".
func (c MetadataCarrier) Get(key string) string {
	if v := metadata.MD(c).Get(key); len(v) > 0 {
		return v[0]
	}
	return ""
}

// Set replaces the values stored under key with value.
func (c MetadataCarrier) Set(key, value string) {
	if c == nil {
		return
	}
	metadata.MD(c).Set(key, value)
}

// Keys returns the stored keys, sorted so that output is reproducible.
func (c MetadataCarrier) Keys() []string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, strings.ToLower(k))
	}
	sort.Strings(keys)
	return keys
}

// outgoingHeaders collects what a propagator injects, as key/value pairs
// ready for metadata.AppendToOutgoingContext. The inline buffer fits W3C
// (traceparent, tracestate, baggage), multi-header B3, x-request-id and
// the two peer metadata headers together, so
// injection usually needs no allocation of its own.
type outgoingHeaders struct {
	kv  []string
	buf [16]string
}

func (h *outgoingHeaders) reset() { h.kv = h.buf[:0] }

func (h *outgoingHeaders) Get(key string) string {
	key = strings.ToLower(key)
	for i := 0; i+1 < len(h.kv); i += 2 {
		if h.kv[i] == key {
			return h.kv[i+1]
		}
	}
	return ""
}

func (h *outgoingHeaders) Set(key, value string) {
	key = strings.ToLower(key)
	for i := 0; i+1 < len(h.kv); i += 2 {
		if h.kv[i] == key {
			h.kv[i+1] = value
			return
		}
	}
	h.kv = append(h.kv, key, value)
}

func (h *outgoingHeaders) Keys() []string {
	keys := make([]string, 0, len(h.kv)/2)
	for i := 0; i+1 < len(h.kv); i += 2 {
		keys = append(keys, h.kv[i])
	}
	return keys
}

// attachOutgoing adds the collected headers to ctx's outgoing metadata,
// replacing any value already there under the same key. A stale traceparent
// is common when a service forwards its incoming metadata; left in place the
// server would see two and could pick the wrong parent.
func (h *outgoingHeaders) attachOutgoing(ctx context.Context, caller callerMetadata) context.Context {
	if len(h.kv) == 0 {
		return ctx
	}
	for i := 0; i < len(h.kv); i += 2 {
		if caller.has(ctx, h.kv[i]) {
			md, _ := metadata.FromOutgoingContext(ctx) // a copy, safe to change
			for j := 0; j < len(h.kv); j += 2 {
				md.Set(h.kv[j], h.kv[j+1])
			}
			return metadata.NewOutgoingContext(ctx, md)
		}
	}
	// The common case: append without copying the caller's metadata.
	return metadata.AppendToOutgoingContext(ctx, h.kv...)
}

// incomingHeaders reads a server RPC's incoming metadata, which begin put
// in the state, one key at a time and without copying (through grpc-go's
// API, an allocation per header read), and adds up the size of what it
// found into the state's headerBytes (for the request's byte count). The
// rpcContext stands in for it, so passing it allocates nothing.
type incomingHeaders rpcContext

func (h *incomingHeaders) Get(key string) string {
	v := incomingmd.ValuesCased(h.state.incomingMD, key, &h.state.incomingCase)
	if len(v) == 0 {
		return ""
	}
	h.state.headerBytes += int64(len(key) + len(v[0]))
	return v[0]
}

func (*incomingHeaders) Set(string, string) {} // incoming metadata is read-only

func (h *incomingHeaders) Keys() []string {
	return MetadataCarrier(h.state.incomingMD).Keys()
}
