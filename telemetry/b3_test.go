package telemetry_test

import (
	"context"
	"net/http"
	"slices"
	"testing"

	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"

	"mesh/internal/testutil"
	"mesh/telemetry"
)

var (
	b3Trace = "4bf92f3577b34da6a3ce929d0e0e4736"
	b3Span  = "00f067aa0ba902b7"
)

func b3Context(t *testing.T, sampled bool) context.Context {
	t.Helper()
	traceID, _ := trace.TraceIDFromHex(b3Trace)
	spanID, _ := trace.SpanIDFromHex(b3Span)
	cfg := trace.SpanContextConfig{TraceID: traceID, SpanID: spanID}
	if sampled {
		cfg.TraceFlags = trace.FlagsSampled
	}
	return trace.ContextWithSpanContext(context.Background(), trace.NewSpanContext(cfg))
}

func TestB3Inject(t *testing.T) {
	multi := propagation.HeaderCarrier(http.Header{})
	telemetry.B3{}.Inject(b3Context(t, true), multi)
	for key, want := range map[string]string{"X-B3-Traceid": b3Trace, "X-B3-Spanid": b3Span, "X-B3-Sampled": "1"} {
		if got := http.Header(multi).Get(key); got != want {
			t.Errorf("%s = %q, want %q", key, got, want)
		}
	}
	if got := http.Header(multi).Get("X-B3-Parentspanid"); got != "" {
		t.Errorf("parent span ID %q written without a known parent", got)
	}

	single := propagation.HeaderCarrier(http.Header{})
	telemetry.B3{SingleHeader: true}.Inject(b3Context(t, false), single)
	if got, want := http.Header(single).Get("b3"), b3Trace+"-"+b3Span+"-0"; got != want {
		t.Errorf("b3 = %q, want %q", got, want)
	}
	if len(single) != 1 {
		t.Errorf("single-header B3 wrote %v", single)
	}

	none := propagation.HeaderCarrier(http.Header{})
	telemetry.B3{}.Inject(context.Background(), none)
	if len(none) != 0 {
		t.Errorf("B3 wrote %v without a span context", none)
	}
	if got := (telemetry.B3{}).Fields(); !slices.Contains(got, "x-b3-traceid") || !slices.Contains(got, "x-b3-parentspanid") {
		t.Errorf("multi-header fields %v", got)
	}
	if got := (telemetry.B3{SingleHeader: true}).Fields(); !slices.Equal(got, []string{"b3"}) {
		t.Errorf("single-header fields %v, want [b3]", got)
	}
}

func TestB3Extract(t *testing.T) {
	tests := []struct {
		name        string
		headers     map[string]string
		wantTrace   string // "" means no span context
		wantSampled bool
	}{
		{name: "multi sampled", headers: map[string]string{"x-b3-traceid": b3Trace, "x-b3-spanid": b3Span, "x-b3-sampled": "1"}, wantTrace: b3Trace, wantSampled: true},
		{name: "multi unsampled", headers: map[string]string{"x-b3-traceid": b3Trace, "x-b3-spanid": b3Span, "x-b3-sampled": "0"}, wantTrace: b3Trace},
		{name: "multi debug", headers: map[string]string{"x-b3-traceid": b3Trace, "x-b3-spanid": b3Span, "x-b3-flags": "1"}, wantTrace: b3Trace, wantSampled: true},
		{name: "multi legacy true", headers: map[string]string{"x-b3-traceid": b3Trace, "x-b3-spanid": b3Span, "x-b3-sampled": "true"}, wantTrace: b3Trace, wantSampled: true},
		{name: "64-bit trace ID", headers: map[string]string{"x-b3-traceid": "a3ce929d0e0e4736", "x-b3-spanid": b3Span, "x-b3-sampled": "1"}, wantTrace: "0000000000000000a3ce929d0e0e4736", wantSampled: true},
		{name: "upper case", headers: map[string]string{"x-b3-traceid": "4BF92F3577B34DA6A3CE929D0E0E4736", "x-b3-spanid": "00F067AA0BA902B7"}, wantTrace: b3Trace},
		{name: "single", headers: map[string]string{"b3": b3Trace + "-" + b3Span + "-1-" + "0020000000000001"}, wantTrace: b3Trace, wantSampled: true},
		{name: "single debug", headers: map[string]string{"b3": b3Trace + "-" + b3Span + "-d"}, wantTrace: b3Trace, wantSampled: true},
		{name: "single without sampling", headers: map[string]string{"b3": b3Trace + "-" + b3Span}, wantTrace: b3Trace},
		{name: "single wins over multi", headers: map[string]string{"b3": b3Trace + "-" + b3Span + "-1", "x-b3-traceid": "0000000000000000a3ce929d0e0e4736", "x-b3-spanid": b3Span}, wantTrace: b3Trace, wantSampled: true},
		{name: "bad single falls back to multi", headers: map[string]string{"b3": "garbage", "x-b3-traceid": b3Trace, "x-b3-spanid": b3Span}, wantTrace: b3Trace},
		{name: "sampling only", headers: map[string]string{"b3": "0"}},
		{name: "short trace ID", headers: map[string]string{"x-b3-traceid": "abc", "x-b3-spanid": b3Span}},
		{name: "non-hex span ID", headers: map[string]string{"x-b3-traceid": b3Trace, "x-b3-spanid": "zzzzzzzzzzzzzzzz"}},
		{name: "zero trace ID", headers: map[string]string{"x-b3-traceid": "00000000000000000000000000000000", "x-b3-spanid": b3Span}},
		{name: "bad sampled", headers: map[string]string{"x-b3-traceid": b3Trace, "x-b3-spanid": b3Span, "x-b3-sampled": "maybe"}},
		{name: "bad parent", headers: map[string]string{"x-b3-traceid": b3Trace, "x-b3-spanid": b3Span, "x-b3-parentspanid": "12"}},
		{name: "too many parts", headers: map[string]string{"b3": b3Trace + "-" + b3Span + "-1-0020000000000001-x"}},
		{name: "empty", headers: map[string]string{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			md := metadata.New(tt.headers)
			sc := trace.SpanContextFromContext(telemetry.B3{}.Extract(context.Background(), telemetry.MetadataCarrier(md)))
			if tt.wantTrace == "" {
				if sc.IsValid() {
					t.Fatalf("extracted %v from malformed headers", sc)
				}
				return
			}
			if !sc.IsValid() || sc.TraceID().String() != tt.wantTrace || sc.SpanID().String() != b3Span {
				t.Fatalf("extracted trace %v span %v, want %s %s", sc.TraceID(), sc.SpanID(), tt.wantTrace, b3Span)
			}
			if sc.IsSampled() != tt.wantSampled || !sc.IsRemote() {
				t.Errorf("sampled %v remote %v, want sampled %v and remote", sc.IsSampled(), sc.IsRemote(), tt.wantSampled)
			}
		})
	}
}

func TestB3OverGRPCSendsParentSpanID(t *testing.T) {
	ctx := testutil.Context(t)
	for _, single := range []bool{false, true} {
		prop := telemetry.B3{SingleHeader: single}
		env := newTestEnv(t, envConfig{
			clientOpts: []telemetry.GRPCOption{telemetry.WithPropagator(prop)},
			serverOpts: []telemetry.GRPCOption{telemetry.WithPropagator(prop)},
			// The caller's own span must be sampled for the client span to be.
			clientSampler: sdktrace.AlwaysSample(),
		})
		callCtx, caller := env.caller.provider.Tracer("test").Start(ctx, "caller")
		if _, err := env.client.Check(callCtx, &healthpb.HealthCheckRequest{}); err != nil {
			t.Fatalf("check: %v", err)
		}
		caller.End()
		seen := env.nextObservation(ctx, t)
		env.caller.waitEnds(ctx, t, 1)
		env.callee.waitEnds(ctx, t, 1)
		var client sdktrace.ReadOnlySpan
		for _, s := range env.caller.spans.Ended() {
			if s.SpanKind() == trace.SpanKindClient {
				client = s
			}
		}
		if client == nil {
			t.Fatal("no client span")
		}
		server := onlySpan(t, "server", env.callee.spans)
		if server.Parent().SpanID() != client.SpanContext().SpanID() || server.SpanContext().TraceID() != caller.SpanContext().TraceID() {
			t.Errorf("single=%v: server span not the client span's child", single)
		}
		if len(seen.traceparent) != 0 {
			t.Errorf("single=%v: B3 alone sent traceparent %q", single, seen.traceparent)
		}
		var parent string
		if single {
			parent = seen.b3[len(seen.b3)-16:]
		} else {
			parent = seen.b3ParentSpanID
		}
		if parent != caller.SpanContext().SpanID().String() {
			t.Errorf("single=%v: parent span ID %q, want the caller's span %s", single, parent, caller.SpanContext().SpanID())
		}
	}
}
