package telemetry_test

import (
	"context"
	"slices"
	"testing"

	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/metadata"

	"mesh/telemetry"
)

func TestMetadataCarrier(t *testing.T) {
	md := metadata.MD{"X-Request-Id": {"r-1"}}
	c := telemetry.MetadataCarrier(md)
	c.Set("TraceParent", "first")
	c.Set("traceparent", "second")

	if got := md["traceparent"]; !slices.Equal(got, []string{"second"}) {
		t.Errorf("md[traceparent] = %q, want one lower-cased key holding the last value", got)
	}
	if got := c.Get("TRACEPARENT"); got != "second" {
		t.Errorf("Get(TRACEPARENT) = %q, want %q", got, "second")
	}
	if got := c.Get("absent"); got != "" {
		t.Errorf("Get(absent) = %q, want empty", got)
	}
	if got, want := c.Keys(), []string{"traceparent", "x-request-id"}; !slices.Equal(got, want) {
		t.Errorf("Keys() = %q, want %q", got, want)
	}

	var empty telemetry.MetadataCarrier
	empty.Set("k", "v") // must not panic
	if empty.Get("k") != "" || len(empty.Keys()) != 0 {
		t.Error("a nil carrier holds values")
	}
}

func TestDefaultPropagatorRoundTrip(t *testing.T) {
	sc := trace.NewSpanContext(trace.SpanContextConfig{
		TraceID:    trace.TraceID{0x4b, 0xf9, 0x2f, 0x35, 0x77, 0xb3, 0x4d, 0xa6, 0xa3, 0xce, 0x92, 0x9d, 0x0e, 0x0e, 0x47, 0x36},
		SpanID:     trace.SpanID{0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7},
		TraceFlags: trace.FlagsSampled,
	})
	md := metadata.MD{}
	p := telemetry.DefaultPropagator()
	p.Inject(trace.ContextWithSpanContext(context.Background(), sc), telemetry.MetadataCarrier(md))

	got := trace.SpanContextFromContext(p.Extract(context.Background(), telemetry.MetadataCarrier(md)))
	if !got.Equal(sc.WithRemote(true)) {
		t.Errorf("extracted %v, want %v (remote)", got, sc)
	}
	if fields := p.Fields(); !slices.Contains(fields, "traceparent") || !slices.Contains(fields, "baggage") {
		t.Errorf("default propagator fields = %q, want W3C trace context and baggage", fields)
	}
}
