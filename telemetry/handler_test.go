package telemetry_test

import (
	"context"
	"io"
	"net"
	"regexp"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/baggage"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	grpccodes "google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"

	"mesh/internal/testutil"
	"mesh/telemetry"
)

// testTimeout bounds every wait in these tests; hitting it fails the test.
const testTimeout = testutil.HangGuard

// observation is what the test service saw of one request.
type observation struct {
	traceparent    []string
	b3             string
	b3ParentSpanID string
	requestID      string // x-request-id as received
	ctxRequestID   string // telemetry.RequestIDFromContext
	spanContext    trace.SpanContext
	baggage        baggage.Baggage
	contentType    string
}

// healthService answers Check according to the requested service name, so
// tests can ask for any status, and reports what each request carried.
type healthService struct {
	healthpb.UnimplementedHealthServer
	seen chan observation
}

func (s *healthService) observe(ctx context.Context) {
	md, _ := metadata.FromIncomingContext(ctx)
	first := func(key string) string {
		if v := md.Get(key); len(v) > 0 {
			return v[0]
		}
		return ""
	}
	ctxID, _ := telemetry.RequestIDFromContext(ctx)
	s.seen <- observation{
		traceparent:    md.Get("traceparent"),
		b3:             first("b3"),
		b3ParentSpanID: first("x-b3-parentspanid"),
		requestID:      first("x-request-id"),
		ctxRequestID:   ctxID,
		spanContext:    trace.SpanContextFromContext(ctx),
		baggage:        baggage.FromContext(ctx),
		contentType:    first("content-type"),
	}
}

func (s *healthService) Check(ctx context.Context, req *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	s.observe(ctx)
	switch req.GetService() {
	case "internal":
		return nil, status.Error(grpccodes.Internal, "database on fire")
	case "missing":
		return nil, status.Error(grpccodes.NotFound, "no such service")
	}
	return &healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING}, nil
}

func (s *healthService) Watch(req *healthpb.HealthCheckRequest, stream healthpb.Health_WatchServer) error {
	s.observe(stream.Context())
	return stream.Send(&healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING})
}

// endNotifier passes every event to the handler under test and then reports
// each stats.End, so a test knows when that handler has finished an RPC.
type endNotifier struct {
	stats.Handler
	ends chan struct{}
}

func (n endNotifier) HandleRPC(ctx context.Context, rs stats.RPCStats) {
	n.Handler.HandleRPC(ctx, rs)
	if _, ok := rs.(*stats.End); ok {
		n.ends <- struct{}{}
	}
}

// side is one end of a test RPC: its tracer provider, what it recorded, and
// a signal per RPC its handler finished.
type side struct {
	provider *sdktrace.TracerProvider
	spans    *tracetest.SpanRecorder
	ends     chan struct{}
}

// newSide builds a side whose provider samples with sampler, or parent-based
// (the SDK's default) when sampler is nil, and shuts it down with the test.
func newSide(t testing.TB, sampler sdktrace.Sampler) *side {
	t.Helper()
	s := &side{ends: make(chan struct{}, 64)}
	s.provider, s.spans = newRecordingProvider(t, sampler)
	return s
}

// waitEnds waits until the side's handler has ended n RPCs.
func (s *side) waitEnds(ctx context.Context, t *testing.T, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		select {
		case <-s.ends:
		case <-ctx.Done():
			t.Fatalf("handler ended %d of %d RPCs: %v", i, n, ctx.Err())
		}
	}
}

type testEnv struct {
	client  healthpb.HealthClient
	service *healthService
	caller  *side
	callee  *side
	addr    *net.TCPAddr
}

type envConfig struct {
	clientSampler, serverSampler sdktrace.Sampler // nil: parent-based
	clientOpts, serverOpts       []telemetry.GRPCOption
}

// newTestEnv runs a gRPC health server and a client on loopback, each with
// its own handler and tracer provider, and stops both when the test ends.
func newTestEnv(t *testing.T, cfg envConfig) *testEnv {
	t.Helper()
	env := &testEnv{
		service: &healthService{seen: make(chan observation, 64)},
		caller:  newSide(t, cfg.clientSampler),
		callee:  newSide(t, cfg.serverSampler),
	}

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	env.addr = lis.Addr().(*net.TCPAddr)
	serverHandler := telemetry.NewServerHandler(append([]telemetry.GRPCOption{telemetry.WithTracerProvider(env.callee.provider)}, cfg.serverOpts...)...)
	srv := grpc.NewServer(grpc.StatsHandler(endNotifier{Handler: serverHandler, ends: env.callee.ends}))
	healthpb.RegisterHealthServer(srv, env.service)
	testutil.Serve(t, srv, lis)

	clientHandler := telemetry.NewClientHandler(append([]telemetry.GRPCOption{telemetry.WithTracerProvider(env.caller.provider)}, cfg.clientOpts...)...)
	conn, err := grpc.NewClient("passthrough:///"+lis.Addr().String(),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithStatsHandler(endNotifier{Handler: clientHandler, ends: env.caller.ends}))
	if err != nil {
		t.Fatalf("new client: %v", err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	env.client = healthpb.NewHealthClient(conn)
	return env
}

func (env *testEnv) nextObservation(ctx context.Context, t *testing.T) observation {
	t.Helper()
	select {
	case o := <-env.service.seen:
		return o
	case <-ctx.Done():
		t.Fatalf("service saw no request: %v", ctx.Err())
		return observation{}
	}
}

func onlySpan(t *testing.T, who string, rec *tracetest.SpanRecorder) sdktrace.ReadOnlySpan {
	t.Helper()
	spans := rec.Ended()
	if len(spans) != 1 {
		t.Fatalf("%s recorded %d spans, want 1: %v", who, len(spans), spanNames(spans))
	}
	return spans[0]
}

func spanNames(spans []sdktrace.ReadOnlySpan) []string {
	names := make([]string, len(spans))
	for i, s := range spans {
		names[i] = s.Name()
	}
	return names
}

func wantAttr(t *testing.T, s sdktrace.ReadOnlySpan, key string, want attribute.Value) {
	t.Helper()
	got, ok := spanAttr(s, attribute.Key(key))
	if !ok {
		t.Errorf("%s span %q: attribute %s missing; have %v", s.SpanKind(), s.Name(), key, s.Attributes())
		return
	}
	if got != want {
		t.Errorf("%s span %q: attribute %s = %v, want %v", s.SpanKind(), s.Name(), key, got.Emit(), want.Emit())
	}
}

func TestServerSpanIsChildOfClientSpan(t *testing.T) {
	ctx := testutil.Context(t)
	workload := attribute.String("mesh.workload", "checkout")
	env := newTestEnv(t, envConfig{
		clientOpts: []telemetry.GRPCOption{telemetry.WithAttributes(workload)},
		serverOpts: []telemetry.GRPCOption{telemetry.WithAttributes(workload)},
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
		t.Fatalf("no client span among %v", spanNames(env.caller.spans.Ended()))
	}
	server := onlySpan(t, "server", env.callee.spans)

	const name = "grpc.health.v1.Health/Check"
	if client.Name() != name || server.Name() != name {
		t.Errorf("span names = %q (client), %q (server), want %q", client.Name(), server.Name(), name)
	}
	if server.SpanKind() != trace.SpanKindServer {
		t.Errorf("server span kind = %v, want server", server.SpanKind())
	}
	if got, want := client.Parent().SpanID(), caller.SpanContext().SpanID(); got != want {
		t.Errorf("client span parent = %v, want the caller's span %v", got, want)
	}
	traceID := caller.SpanContext().TraceID()
	if client.SpanContext().TraceID() != traceID || server.SpanContext().TraceID() != traceID {
		t.Errorf("trace IDs: caller %v, client %v, server %v; want one trace",
			traceID, client.SpanContext().TraceID(), server.SpanContext().TraceID())
	}
	if got, want := server.Parent().SpanID(), client.SpanContext().SpanID(); got != want {
		t.Errorf("server span parent = %v, want the client span %v", got, want)
	}
	if !server.Parent().IsRemote() {
		t.Error("server span's parent is not marked remote")
	}
	if got := seen.spanContext.SpanID(); got != server.SpanContext().SpanID() {
		t.Errorf("service method's context holds span %v, want the server span %v", got, server.SpanContext().SpanID())
	}

	for _, s := range []sdktrace.ReadOnlySpan{client, server} {
		wantAttr(t, s, "rpc.system", attribute.StringValue("grpc"))
		wantAttr(t, s, "rpc.service", attribute.StringValue("grpc.health.v1.Health"))
		wantAttr(t, s, "rpc.method", attribute.StringValue("Check"))
		wantAttr(t, s, "rpc.grpc.status_code", attribute.IntValue(0))
		wantAttr(t, s, "mesh.workload", attribute.StringValue("checkout"))
		wantAttr(t, s, "network.peer.address", attribute.StringValue("127.0.0.1"))
		if st := s.Status(); st.Code != codes.Unset {
			t.Errorf("%s span status = %v %q, want unset", s.SpanKind(), st.Code, st.Description)
		}
	}
	wantAttr(t, client, "server.address", attribute.StringValue("127.0.0.1"))
	wantAttr(t, client, "server.port", attribute.IntValue(env.addr.Port))
	wantAttr(t, client, "network.peer.port", attribute.IntValue(env.addr.Port))
}

func TestErrorStatusIsRecorded(t *testing.T) {
	tests := []struct {
		service         string
		code            grpccodes.Code
		message         string
		wantServerError bool
	}{
		// Internal is the server's fault: both sides mark an error.
		{service: "internal", code: grpccodes.Internal, message: "database on fire", wantServerError: true},
		// NotFound blames the caller: only the client marks an error.
		{service: "missing", code: grpccodes.NotFound, message: "no such service", wantServerError: false},
	}
	for _, tt := range tests {
		t.Run(tt.code.String(), func(t *testing.T) {
			ctx := testutil.Context(t)
			env := newTestEnv(t, envConfig{})

			_, err := env.client.Check(ctx, &healthpb.HealthCheckRequest{Service: tt.service})
			if status.Code(err) != tt.code {
				t.Fatalf("check: err = %v, want code %v", err, tt.code)
			}
			env.nextObservation(ctx, t)
			env.caller.waitEnds(ctx, t, 1)
			env.callee.waitEnds(ctx, t, 1)
			client := onlySpan(t, "client", env.caller.spans)
			server := onlySpan(t, "server", env.callee.spans)

			wantAttr(t, client, "rpc.grpc.status_code", attribute.IntValue(int(tt.code)))
			wantAttr(t, server, "rpc.grpc.status_code", attribute.IntValue(int(tt.code)))
			if st := client.Status(); st.Code != codes.Error || st.Description != tt.message {
				t.Errorf("client span status = %v %q, want error %q", st.Code, st.Description, tt.message)
			}
			wantCode, wantDesc := codes.Unset, ""
			if tt.wantServerError {
				wantCode, wantDesc = codes.Error, tt.message
			}
			if st := server.Status(); st.Code != wantCode || st.Description != wantDesc {
				t.Errorf("server span status = %v %q, want %v %q", st.Code, st.Description, wantCode, wantDesc)
			}
		})
	}
}

var unsampledTraceparent = regexp.MustCompile(`^00-([0-9a-f]{32})-([0-9a-f]{16})-00$`)

func TestNeverSampledTraceStillPropagates(t *testing.T) {
	ctx := testutil.Context(t)
	env := newTestEnv(t, envConfig{clientSampler: sdktrace.NeverSample()})

	if _, err := env.client.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("check: %v", err)
	}
	seen := env.nextObservation(ctx, t)
	env.caller.waitEnds(ctx, t, 1)
	env.callee.waitEnds(ctx, t, 1)

	if n := len(env.caller.spans.Ended()) + len(env.caller.spans.Started()); n != 0 {
		t.Errorf("client recorded %d spans with a never-sample sampler", n)
	}
	// The server follows its parent's decision, so it records nothing either.
	if n := len(env.callee.spans.Ended()) + len(env.callee.spans.Started()); n != 0 {
		t.Errorf("server recorded %d spans under an unsampled parent", n)
	}
	if len(seen.traceparent) != 1 {
		t.Fatalf("server got traceparent %q, want exactly one", seen.traceparent)
	}
	m := unsampledTraceparent.FindStringSubmatch(seen.traceparent[0])
	if m == nil {
		t.Fatalf("server got traceparent %q, want version 00 with the sampled flag clear", seen.traceparent[0])
	}
	if got := seen.spanContext.TraceID().String(); got != m[1] {
		t.Errorf("service method's trace ID = %s, want %s from traceparent", got, m[1])
	}
	if seen.spanContext.IsSampled() {
		t.Error("service method's span context is sampled under an unsampled parent")
	}
}

func TestUnsampledClientParentsSampledServer(t *testing.T) {
	ctx := testutil.Context(t)
	// A server that samples regardless still joins the client's trace.
	env := newTestEnv(t, envConfig{clientSampler: sdktrace.NeverSample(), serverSampler: sdktrace.AlwaysSample()})

	if _, err := env.client.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("check: %v", err)
	}
	seen := env.nextObservation(ctx, t)
	env.callee.waitEnds(ctx, t, 1)
	server := onlySpan(t, "server", env.callee.spans)
	m := unsampledTraceparent.FindStringSubmatch(seen.traceparent[0])
	if m == nil {
		t.Fatalf("server got traceparent %q, want the sampled flag clear", seen.traceparent)
	}
	if server.SpanContext().TraceID().String() != m[1] || server.Parent().SpanID().String() != m[2] {
		t.Errorf("server span in trace %v under %v, want trace %s under %s",
			server.SpanContext().TraceID(), server.Parent().SpanID(), m[1], m[2])
	}
}

// A sampler that ignores the parent but samples by trace ID must still be
// asked about every child of an unsampled parent: the shortcut that skips
// such children is for parent-based samplers only.
func TestRatioSamplerStillAskedUnderUnsampledParent(t *testing.T) {
	ctx := testutil.Context(t)
	// Keeps all but one trace ID in ten million, without looking at parents.
	env := newTestEnv(t, envConfig{clientSampler: sdktrace.NeverSample(), serverSampler: sdktrace.TraceIDRatioBased(1 - 1e-7)})

	for i := 0; i < 3; i++ {
		if _, err := env.client.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
			t.Fatalf("check: %v", err)
		}
		env.nextObservation(ctx, t)
	}
	env.callee.waitEnds(ctx, t, 3)
	if n := len(env.callee.spans.Ended()); n != 3 {
		t.Errorf("server recorded %d spans under unsampled parents, want 3 (its sampler keeps them)", n)
	}
}

func TestBaggagePropagates(t *testing.T) {
	ctx := testutil.Context(t)
	env := newTestEnv(t, envConfig{})

	member, err := baggage.NewMember("tenant", "acme")
	if err != nil {
		t.Fatal(err)
	}
	bag, err := baggage.New(member)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := env.client.Check(baggage.ContextWithBaggage(ctx, bag), &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("check: %v", err)
	}
	seen := env.nextObservation(ctx, t)
	if got := seen.baggage.Member("tenant").Value(); got != "acme" {
		t.Errorf("server baggage tenant = %q, want %q (baggage %q)", got, "acme", seen.baggage.String())
	}
}

func TestStaleTraceparentIsReplaced(t *testing.T) {
	ctx := testutil.Context(t)
	env := newTestEnv(t, envConfig{})

	// As if a service forwarded the metadata it received to its own upstream.
	const stale = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	callCtx := metadata.AppendToOutgoingContext(ctx, "traceparent", stale, "x-request-id", "r-1")
	if _, err := env.client.Check(callCtx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("check: %v", err)
	}
	seen := env.nextObservation(ctx, t)
	env.caller.waitEnds(ctx, t, 1)
	client := onlySpan(t, "client", env.caller.spans)
	if len(seen.traceparent) != 1 {
		t.Fatalf("server got traceparent %q, want exactly one", seen.traceparent)
	}
	want := "00-" + client.SpanContext().TraceID().String() + "-" + client.SpanContext().SpanID().String() + "-01"
	if seen.traceparent[0] != want {
		t.Errorf("server got traceparent %q, want the client span's %q", seen.traceparent[0], want)
	}
}

func TestStreamingRPCSpans(t *testing.T) {
	ctx := testutil.Context(t)
	env := newTestEnv(t, envConfig{})

	stream, err := env.client.Watch(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		t.Fatalf("watch: %v", err)
	}
	if _, err := stream.Recv(); err != nil {
		t.Fatalf("recv: %v", err)
	}
	if _, err := stream.Recv(); err != io.EOF {
		t.Fatalf("second recv: err = %v, want EOF", err)
	}
	env.nextObservation(ctx, t)
	env.caller.waitEnds(ctx, t, 1)
	env.callee.waitEnds(ctx, t, 1)
	client := onlySpan(t, "client", env.caller.spans)
	server := onlySpan(t, "server", env.callee.spans)
	const name = "grpc.health.v1.Health/Watch"
	if client.Name() != name || server.Name() != name {
		t.Errorf("span names = %q, %q, want %q", client.Name(), server.Name(), name)
	}
	if server.Parent().SpanID() != client.SpanContext().SpanID() {
		t.Errorf("server span parent = %v, want client span %v", server.Parent().SpanID(), client.SpanContext().SpanID())
	}
	wantAttr(t, server, "rpc.grpc.status_code", attribute.IntValue(0))
}
