package telemetry

import (
	"context"
	"reflect"
	"sync/atomic"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/embedded"
	"go.opentelemetry.io/otel/trace/noop"
)

// unsampledShortcut decides whether an RPC whose parent span is known and
// not sampled may skip starting a span of its own. Production mostly runs a
// parent-based sampler, which never samples such a child: then starting one
// only costs (an ID, a span, a context) and records nothing. The child's
// trace continues all the same: the parent's span context stays current and
// is what gets propagated, with its "not sampled" flag.
//
// Whether the tracer's sampler is parent-based is learned by asking it once,
// the first time it matters, about a child of an unsampled remote parent
// whose trace ID any ratio-based sampler would keep. The global provider
// can be replaced at any time; with it, the answer is asked again whenever
// otel.GetTracerProvider returns another provider than when it was asked.
type unsampledShortcut struct {
	tracer trace.Tracer
	// current returns the global provider when tracer comes from it; nil
	// otherwise.
	current func() trace.TracerProvider
	// answer is the probe's, for the global provider it was asked under
	// (nil when not global); nil until asked.
	answer atomic.Pointer[shortcutAnswer]
}

type shortcutAnswer struct {
	on     bool
	global trace.TracerProvider
}

func newUnsampledShortcut(tp trace.TracerProvider, tracer trace.Tracer) *unsampledShortcut {
	s := &unsampledShortcut{tracer: tracer}
	if sameProvider(tp, otel.GetTracerProvider()) {
		s.current = otel.GetTracerProvider
	}
	return s
}

// sameProvider compares two providers without panicking on a type that
// cannot be compared.
func sameProvider(a, b trace.TracerProvider) bool {
	ta, tb := reflect.TypeOf(a), reflect.TypeOf(b)
	return ta == tb && ta != nil && ta.Comparable() && a == b
}

// skip reports whether a span whose parent is parent need not be started.
func (s *unsampledShortcut) skip(parent trace.SpanContext) bool {
	if !parent.IsValid() || parent.IsSampled() {
		return false
	}
	var global trace.TracerProvider
	if s.current != nil {
		global = s.current()
	}
	if a := s.answer.Load(); a != nil && (s.current == nil || sameProvider(a.global, global)) {
		return a.on
	}
	a := &shortcutAnswer{on: s.probe(), global: global}
	s.answer.Store(a)
	return a.on
}

// probe starts a child of an unsampled remote parent and reports whether
// the sampler left it unsampled. The trace ID's low half is zero: a
// TraceIDRatioBased sampler keeps such an ID at any ratio above zero, so one
// that ignores the parent shows itself. A sampled probe is never ended, so
// no exporter sees it.
func (s *unsampledShortcut) probe() bool {
	sc := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: trace.TraceID{0: 1},
		SpanID:  trace.SpanID{0: 1},
		Remote:  true,
	})
	ctx := trace.ContextWithRemoteSpanContext(context.Background(), sc)
	_, span := s.tracer.Start(ctx, "mesh.sampler-probe")
	if span.IsRecording() || span.SpanContext().IsSampled() {
		return false
	}
	span.End()
	return true
}

// unstartedSpan stands for a span the shortcut did not start: it records
// nothing and reports its parent's context, for access logs. It lives in
// the RPC's state, so it costs no allocation, and holds only the context so
// the state stays small.
type unstartedSpan struct {
	embedded.Span
	sc trace.SpanContext
}

func (s *unstartedSpan) SpanContext() trace.SpanContext        { return s.sc }
func (*unstartedSpan) End(...trace.SpanEndOption)              {}
func (*unstartedSpan) AddEvent(string, ...trace.EventOption)   {}
func (*unstartedSpan) AddLink(trace.Link)                      {}
func (*unstartedSpan) IsRecording() bool                       { return false }
func (*unstartedSpan) RecordError(error, ...trace.EventOption) {}
func (*unstartedSpan) SetStatus(codes.Code, string)            {}
func (*unstartedSpan) SetName(string)                          {}
func (*unstartedSpan) SetAttributes(...attribute.KeyValue)     {}
func (*unstartedSpan) TracerProvider() trace.TracerProvider    { return noop.NewTracerProvider() }
