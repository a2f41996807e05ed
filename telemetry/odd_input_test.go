package telemetry_test

import (
	"context"
	"net"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"google.golang.org/grpc/stats"

	"mesh/telemetry"
)

func TestHandlersTolerateOddInput(t *testing.T) {
	tests := []struct {
		fullMethod  string
		wantName    string
		wantService string // "" means the attribute is absent
		wantMethod  string
	}{
		{fullMethod: "/pkg.Service/Method", wantName: "pkg.Service/Method", wantService: "pkg.Service", wantMethod: "Method"},
		{fullMethod: "", wantName: "grpc"},
		{fullMethod: "/", wantName: "grpc"},
		{fullMethod: "noslash", wantName: "noslash", wantMethod: "noslash"},
		{fullMethod: "/a/b/c", wantName: "a/b/c", wantService: "a/b", wantMethod: "c"},
		{fullMethod: "/svc/", wantName: "svc/", wantService: "svc"},
	}
	for _, client := range []bool{true, false} {
		for _, tt := range tests {
			tp, rec := newRecordingProvider(t, sdktrace.AlwaysSample())
			var h stats.Handler = telemetry.NewServerHandler(telemetry.WithTracerProvider(tp))
			if client {
				h = telemetry.NewClientHandler(telemetry.WithTracerProvider(tp))
			}
			ctx := h.TagRPC(context.Background(), &stats.RPCTagInfo{FullMethodName: tt.fullMethod})
			for _, rs := range []stats.RPCStats{
				nil,
				&stats.Begin{Client: client},
				&stats.OutHeader{Client: client, Authority: "::::"},
				&stats.OutHeader{Client: client, Authority: "payments", RemoteAddr: &net.UnixAddr{Name: "/tmp/sock", Net: "unix"}},
				&stats.InHeader{Client: client},
				&stats.InHeader{Client: client, RemoteAddr: &net.TCPAddr{IP: net.IPv6loopback, Port: 443}},
				&stats.End{Client: client},
				&stats.End{Client: client}, // a second End must not end anything twice
			} {
				h.HandleRPC(ctx, rs)
			}
			spans := rec.Ended()
			if len(spans) != 1 {
				t.Fatalf("client=%v %q: %d spans ended, want 1", client, tt.fullMethod, len(spans))
			}
			s := spans[0]
			if s.Name() != tt.wantName {
				t.Errorf("client=%v %q: span name %q, want %q", client, tt.fullMethod, s.Name(), tt.wantName)
			}
			for key, want := range map[attribute.Key]string{"rpc.service": tt.wantService, "rpc.method": tt.wantMethod} {
				got, ok := spanAttr(s, key)
				if want == "" && ok {
					t.Errorf("client=%v %q: %s = %q, want none", client, tt.fullMethod, key, got.AsString())
				}
				if want != "" && got.AsString() != want {
					t.Errorf("client=%v %q: %s = %q, want %q", client, tt.fullMethod, key, got.AsString(), want)
				}
			}
		}
	}
}

func TestHandlersIgnoreUntaggedContexts(t *testing.T) {
	tp, rec := newRecordingProvider(t, sdktrace.AlwaysSample())
	for _, h := range []stats.Handler{
		telemetry.NewClientHandler(telemetry.WithTracerProvider(tp)),
		telemetry.NewServerHandler(telemetry.WithTracerProvider(tp)),
	} {
		// A nil RPCTagInfo still yields a span, named generically.
		ctx := h.TagRPC(context.Background(), nil)
		h.HandleRPC(ctx, &stats.End{})
		// Events for RPCs the handler never tagged are ignored.
		h.HandleRPC(context.Background(), &stats.End{})
		ctx = h.TagConn(context.Background(), &stats.ConnTagInfo{})
		h.HandleConn(ctx, &stats.ConnEnd{})
	}
	if n := len(rec.Ended()); n != 2 {
		t.Errorf("%d spans ended, want 2 (one per tagged RPC)", n)
	}
}

func TestNilOptionsAreIgnored(t *testing.T) {
	tp, rec := newRecordingProvider(t, sdktrace.AlwaysSample())
	h := telemetry.NewClientHandler(nil, telemetry.WithTracerProvider(tp), telemetry.WithTracerProvider(nil), telemetry.WithPropagator(nil))
	ctx := h.TagRPC(context.Background(), &stats.RPCTagInfo{FullMethodName: "/s/m"})
	h.HandleRPC(ctx, &stats.End{Client: true})
	if n := len(rec.Ended()); n != 1 {
		t.Errorf("%d spans ended, want 1: a nil option must not replace the tracer provider", n)
	}
}

func TestTwoHandlersOnOneChannelKeepTheirOwnSpans(t *testing.T) {
	tp, rec := newRecordingProvider(t, sdktrace.AlwaysSample())
	outer := telemetry.NewClientHandler(telemetry.WithTracerProvider(tp), telemetry.WithAttributes(attribute.String("handler", "outer")))
	inner := telemetry.NewClientHandler(telemetry.WithTracerProvider(tp), telemetry.WithAttributes(attribute.String("handler", "inner")))
	// grpc-go tags with each handler in turn, then reports every event to both.
	ctx := outer.TagRPC(context.Background(), &stats.RPCTagInfo{FullMethodName: "/s/m"})
	ctx = inner.TagRPC(ctx, &stats.RPCTagInfo{FullMethodName: "/s/m"})
	outer.HandleRPC(ctx, &stats.End{Client: true})
	if n := len(rec.Ended()); n != 1 {
		t.Fatalf("after the outer handler's End: %d spans ended, want 1", n)
	}
	if got, _ := spanAttr(rec.Ended()[0], "handler"); got.AsString() != "outer" {
		t.Errorf("outer handler ended the %q span", got.AsString())
	}
	inner.HandleRPC(ctx, &stats.End{Client: true})
	spans := rec.Ended()
	if len(spans) != 2 {
		t.Fatalf("%d spans ended, want 2", len(spans))
	}
	if spans[1].Parent().SpanID() != spans[0].SpanContext().SpanID() {
		t.Errorf("inner span's parent %v, want the outer span %v", spans[1].Parent().SpanID(), spans[0].SpanContext().SpanID())
	}
}

func TestRouteInfoIsSharedByStackedClientHandlersOnly(t *testing.T) {
	tp, rec := newRecordingProvider(t, sdktrace.AlwaysSample())
	outer := telemetry.NewClientHandler(telemetry.WithTracerProvider(tp))
	inner := telemetry.NewClientHandler(telemetry.WithTracerProvider(tp))
	ctx := outer.TagRPC(context.Background(), &stats.RPCTagInfo{FullMethodName: "/s/m"})
	ctx = inner.TagRPC(ctx, &stats.RPCTagInfo{FullMethodName: "/s/m"})
	if !telemetry.SetRouteInfo(ctx, telemetry.RouteInfo{Cluster: "outbound|80||a.b.svc.cluster.local"}) {
		t.Fatal("SetRouteInfo found no slot in a client attempt's context")
	}
	inner.HandleRPC(ctx, &stats.End{Client: true})
	outer.HandleRPC(ctx, &stats.End{Client: true})
	for _, s := range rec.Ended() {
		if got, _ := spanAttr(s, "upstream_cluster"); got.AsString() != "outbound|80||a.b.svc.cluster.local" {
			t.Errorf("span %v: upstream_cluster %q, want the route both handlers share", s.SpanContext().SpanID(), got.AsString())
		}
	}

	// A server's context offers no slot: calls its method makes must each
	// get their own.
	server := telemetry.NewServerHandler(telemetry.WithTracerProvider(tp))
	sctx := server.TagRPC(context.Background(), &stats.RPCTagInfo{FullMethodName: "/s/m"})
	if telemetry.SetRouteInfo(sctx, telemetry.RouteInfo{Cluster: "x"}) {
		t.Error("SetRouteInfo succeeded on a server context")
	}
	server.HandleRPC(sctx, &stats.End{})
}
