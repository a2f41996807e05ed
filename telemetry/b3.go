package telemetry

import (
	"context"
	"strings"

	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// B3 header names (https://github.com/openzipkin/b3-propagation).
const (
	b3Single       = "b3"
	b3TraceID      = "x-b3-traceid"
	b3SpanID       = "x-b3-spanid"
	b3Sampled      = "x-b3-sampled"
	b3ParentSpanID = "x-b3-parentspanid"
	b3Flags        = "x-b3-flags"
)

// B3 propagates trace context in Zipkin's B3 format, which Envoy sidecars
// read and write. It writes multiple headers (x-b3-traceid, x-b3-spanid,
// x-b3-sampled and, when a handler knows it, x-b3-parentspanid), or the one
// b3 header when SingleHeader is set. It reads either form, preferring the
// single header when both are present and valid.
type B3 struct {
	// SingleHeader selects the compact "b3: trace-span-sampled-parent" form.
	SingleHeader bool
}

var _ propagation.TextMapPropagator = B3{}

// parentSpanKey carries the span ID of the parent of the span being
// injected: a SpanContext does not know its parent, but B3 sends it.
type parentSpanKey struct{}

func withParentSpanID(ctx context.Context, id trace.SpanID) context.Context {
	return context.WithValue(ctx, parentSpanKey{}, id)
}

// Inject writes the span context in ctx to carrier. A context without a
// valid span context writes nothing.
func (b B3) Inject(ctx context.Context, carrier propagation.TextMapCarrier) {
	sc := trace.SpanContextFromContext(ctx)
	if !sc.IsValid() {
		return
	}
	parent, _ := ctx.Value(parentSpanKey{}).(trace.SpanID)
	sampled := "0"
	if sc.IsSampled() {
		sampled = "1"
	}
	if b.SingleHeader {
		v := sc.TraceID().String() + "-" + sc.SpanID().String() + "-" + sampled
		if parent.IsValid() {
			v += "-" + parent.String()
		}
		carrier.Set(b3Single, v)
		return
	}
	carrier.Set(b3TraceID, sc.TraceID().String())
	carrier.Set(b3SpanID, sc.SpanID().String())
	carrier.Set(b3Sampled, sampled)
	if parent.IsValid() {
		carrier.Set(b3ParentSpanID, parent.String())
	}
}

// Extract returns ctx with the remote span context carrier holds in either
// B3 form; malformed headers leave ctx unchanged.
func (B3) Extract(ctx context.Context, carrier propagation.TextMapCarrier) context.Context {
	if v := carrier.Get(b3Single); v != "" {
		if sc, ok := parseB3Single(v); ok {
			return trace.ContextWithRemoteSpanContext(ctx, sc)
		}
	}
	sc, ok := parseB3Multi(carrier.Get(b3TraceID), carrier.Get(b3SpanID), carrier.Get(b3Sampled), carrier.Get(b3Flags), carrier.Get(b3ParentSpanID))
	if !ok {
		return ctx
	}
	return trace.ContextWithRemoteSpanContext(ctx, sc)
}

// Fields returns the headers B3 may write.
func (b B3) Fields() []string {
	if b.SingleHeader {
		return []string{b3Single}
	}
	return []string{b3TraceID, b3SpanID, b3Sampled, b3ParentSpanID}
}

func parseB3Single(v string) (trace.SpanContext, bool) {
	parts := strings.Split(v, "-")
	if len(parts) < 2 || len(parts) > 4 {
		return trace.SpanContext{}, false // also a sampling-only "0", "1" or "d"
	}
	sampled, parent := "", ""
	if len(parts) >= 3 {
		sampled = parts[2]
	}
	if len(parts) == 4 {
		parent = parts[3]
	}
	flags := ""
	if sampled == "d" {
		sampled, flags = "", "1"
	}
	return parseB3Multi(parts[0], parts[1], sampled, flags, parent)
}

func parseB3Multi(traceID, spanID, sampled, flags, parent string) (trace.SpanContext, bool) {
	var cfg trace.SpanContextConfig
	// The spec asks for lower-case hex; some tracers send upper case.
	traceID, spanID, parent = strings.ToLower(traceID), strings.ToLower(spanID), strings.ToLower(parent)
	switch len(traceID) {
	case 16:
		traceID = "0000000000000000" + traceID // 64-bit IDs are left-padded
	case 32:
	default:
		return trace.SpanContext{}, false
	}
	if !isLowerHex(traceID) || !isLowerHex(spanID) || len(spanID) != 16 {
		return trace.SpanContext{}, false
	}
	if parent != "" && (len(parent) != 16 || !isLowerHex(parent)) {
		return trace.SpanContext{}, false
	}
	var err error
	if cfg.TraceID, err = trace.TraceIDFromHex(traceID); err != nil {
		return trace.SpanContext{}, false
	}
	if cfg.SpanID, err = trace.SpanIDFromHex(spanID); err != nil {
		return trace.SpanContext{}, false
	}
	switch {
	case flags == "1":
		cfg.TraceFlags = trace.FlagsSampled // debug implies sampled
	case sampled == "1" || sampled == "true":
		cfg.TraceFlags = trace.FlagsSampled
	case sampled == "", sampled == "0", sampled == "false":
	default:
		return trace.SpanContext{}, false
	}
	cfg.Remote = true
	return trace.NewSpanContext(cfg), true
}

func isLowerHex(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}
