package echo_test

import (
	"context"
	"regexp"
	"testing"

	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"mesh/benchmarks/internal/echo"
	"mesh/internal/testutil"
)

var uuidV4 = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

// TestSendMeshHeaders holds the interceptor to what it stands for: every call
// reaches a grpc-go server with a new traceparent that OpenTelemetry's W3C
// propagator reads as a valid, unsampled remote parent, and a new version 4
// UUID as x-request-id.
func TestSendMeshHeaders(t *testing.T) {
	seen := make(chan metadata.MD, 2)
	srv := grpc.NewServer(grpc.UnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		md, _ := metadata.FromIncomingContext(ctx)
		seen <- md
		return handler(ctx, req)
	}))
	echo.Register(srv)
	addr := testutil.Start(t, srv)
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()), grpc.WithUnaryInterceptor(echo.SendMeshHeaders))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx := testutil.Context(t)
	var traceIDs, requestIDs []string
	for range 2 {
		if err := echo.Call(ctx, conn, echo.NewRequest(), new(wrapperspb.BytesValue)); err != nil {
			t.Fatal(err)
		}
		md := <-seen
		if n := len(md.Get("traceparent")) + len(md.Get("x-request-id")); n != 2 {
			t.Fatalf("the server saw traceparent %q and x-request-id %q, want one of each", md.Get("traceparent"), md.Get("x-request-id"))
		}
		sc := trace.SpanContextFromContext(propagation.TraceContext{}.Extract(context.Background(), propagation.MapCarrier{"traceparent": md.Get("traceparent")[0]}))
		if !sc.IsValid() || !sc.IsRemote() || sc.IsSampled() {
			t.Errorf("traceparent %q reads as %+v, want a valid, unsampled remote parent", md.Get("traceparent")[0], sc)
		}
		if id := md.Get("x-request-id")[0]; !uuidV4.MatchString(id) {
			t.Errorf("x-request-id %q is not a version 4 UUID", id)
		}
		traceIDs = append(traceIDs, sc.TraceID().String())
		requestIDs = append(requestIDs, md.Get("x-request-id")[0])
	}
	if traceIDs[0] == traceIDs[1] || requestIDs[0] == requestIDs[1] {
		t.Errorf("two calls sent the same IDs: traces %q, requests %q", traceIDs, requestIDs)
	}
}
