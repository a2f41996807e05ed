package telemetry

import (
	"context"
	"sync/atomic"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/trace"
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
// whose trace ID any ratio-based sampler would keep. A global provider may
// still be replaced later, so with one the shortcut stays off.
type unsampledShortcut struct {
	tracer trace.Tracer
	state  atomic.Int32 // shortcutUnknown, shortcutOn or shortcutOff
}

const (
	shortcutUnknown int32 = iota
	shortcutOn
	shortcutOff
)

func newUnsampledShortcut(tp trace.TracerProvider, tracer trace.Tracer) *unsampledShortcut {
	s := &unsampledShortcut{tracer: tracer}
	if tp == otel.GetTracerProvider() {
		s.state.Store(shortcutOff)
	}
	return s
}

// skip reports whether a span whose parent is parent need not be started.
func (s *unsampledShortcut) skip(parent trace.SpanContext) bool {
	if !parent.IsValid() || parent.IsSampled() {
		return false
	}
	switch s.state.Load() {
	case shortcutOn:
		return true
	case shortcutOff:
		return false
	}
	on := s.probe()
	if on {
		s.state.Store(shortcutOn)
	} else {
		s.state.Store(shortcutOff)
	}
	return on
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
// the RPC's state, so it costs no allocation.
type unstartedSpan struct {
	noop.Span
	sc trace.SpanContext
}

func (s *unstartedSpan) SpanContext() trace.SpanContext { return s.sc }
