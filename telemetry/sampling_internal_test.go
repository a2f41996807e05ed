package telemetry

import (
	"context"
	"testing"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
)

func unsampledParent() trace.SpanContext {
	return trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: trace.TraceID{0: 9, 15: 9},
		SpanID:  trace.SpanID{0: 9},
		Remote:  true,
	})
}

func TestUnsampledShortcutFollowsTheSampler(t *testing.T) {
	for _, tc := range []struct {
		name    string
		sampler sdktrace.Sampler
		want    bool
	}{
		{"parent-based", sdktrace.ParentBased(sdktrace.AlwaysSample()), true},
		{"parent-based never", sdktrace.ParentBased(sdktrace.NeverSample()), true},
		{"always", sdktrace.AlwaysSample(), false},
		{"ratio", sdktrace.TraceIDRatioBased(0.001), false},
		{"never", sdktrace.NeverSample(), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(tc.sampler))
			defer tp.Shutdown(context.Background())
			s := newUnsampledShortcut(tp, tp.Tracer("test"))
			if got := s.skip(unsampledParent()); got != tc.want {
				t.Errorf("skip = %v, want %v", got, tc.want)
			}
			sampled := unsampledParent().WithTraceFlags(trace.FlagsSampled)
			if s.skip(sampled) || s.skip(trace.SpanContext{}) {
				t.Error("skip is true for a sampled or missing parent")
			}
		})
	}
}

// A global provider can be replaced after the handler was built: the
// sampler is asked again under the new one.
func TestUnsampledShortcutAsksAgainWhenTheGlobalProviderChanges(t *testing.T) {
	var global trace.TracerProvider = noop.NewTracerProvider()
	sdk := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.AlwaysSample()))
	defer sdk.Shutdown(context.Background())
	// A tracer that forwards to whatever is global, as otel's own does.
	s := &unsampledShortcut{tracer: forwardingTracer{current: func() trace.TracerProvider { return global }}}
	s.current = func() trace.TracerProvider { return global }
	if !s.skip(unsampledParent()) {
		t.Fatal("skip is false under a no-op provider")
	}
	global = sdk
	if s.skip(unsampledParent()) {
		t.Error("skip is still true after the global provider became one that samples every span")
	}
}

type forwardingTracer struct {
	noop.Tracer
	current func() trace.TracerProvider
}

func (f forwardingTracer) Start(ctx context.Context, name string, opts ...trace.SpanStartOption) (context.Context, trace.Span) {
	return f.current().Tracer("test").Start(ctx, name, opts...)
}

// sameProvider must not panic on providers of a type that cannot be
// compared.
func TestSameProviderUncomparable(t *testing.T) {
	a, b := uncomparableProvider{names: []string{"a"}}, uncomparableProvider{names: []string{"a"}}
	if sameProvider(a, b) {
		t.Error("two uncomparable providers reported the same")
	}
}

type uncomparableProvider struct {
	noop.TracerProvider
	names []string
}
