package telemetry_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/stats"
	"google.golang.org/protobuf/proto"

	"mesh/internal/testutil"
	"mesh/telemetry"
)

// logBuffer collects JSON log lines; slog handlers may write from several
// goroutines.
type logBuffer struct{ testutil.Buffer }

func (b *logBuffer) records(t *testing.T) []map[string]any {
	t.Helper()
	var out []map[string]any
	for _, line := range strings.Split(strings.TrimSpace(b.String()), "\n") {
		if line == "" {
			continue
		}
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		out = append(out, rec)
	}
	return out
}

func newJSONLogger(b *logBuffer) *slog.Logger {
	return slog.New(slog.NewJSONHandler(b, nil))
}

// router stands in for mesh's balancer: when an attempt begins it records
// the route on the attempt's context, as the picker does with PickInfo.Ctx.
type router struct {
	stats.Handler
	route telemetry.RouteInfo
}

func (r router) HandleRPC(ctx context.Context, rs stats.RPCStats) {
	if _, ok := rs.(*stats.Begin); ok {
		telemetry.SetRouteInfo(ctx, r.route)
	}
	r.Handler.HandleRPC(ctx, rs)
}

func TestGRPCAccessLogAndRequestID(t *testing.T) {
	ctx := testutil.Context(t)
	var clientLog, serverLog logBuffer
	clientTP, clientSpans := newRecordingProvider(t, sdktrace.AlwaysSample())
	serverTP, _ := newRecordingProvider(t, nil)
	clientCreds, serverCreds := mtlsPair(t)
	route := telemetry.RouteInfo{Cluster: "outbound|8080|v2|" + paymentsHost, Subset: "v2", Endpoint: "10.0.0.7:8080", Retries: 1}
	p := startPair(t, pairConfig{
		clientCreds: clientCreds, serverCreds: serverCreds,
		clientOpts: []telemetry.GRPCOption{telemetry.WithTracerProvider(clientTP), telemetry.WithWorkload(checkout),
			telemetry.WithService(paymentsHost), telemetry.WithClock(stepClock(25 * time.Millisecond)),
			telemetry.WithAccessLog(newJSONLogger(&clientLog), telemetry.AccessLogConfig{})},
		serverOpts: []telemetry.GRPCOption{telemetry.WithTracerProvider(serverTP), telemetry.WithWorkload(payments),
			telemetry.WithClock(stepClock(25 * time.Millisecond)),
			telemetry.WithAccessLog(newJSONLogger(&serverLog), telemetry.AccessLogConfig{})},
		wrapClient: func(h stats.Handler) stats.Handler { return router{Handler: h, route: route} },
	})

	req := &healthpb.HealthCheckRequest{Service: "payments"}
	if _, err := p.client.Check(telemetry.WithRequestID(ctx, "req-abc"), req); err != nil {
		t.Fatalf("check: %v", err)
	}
	seen := <-p.service.seen
	if seen.requestID != "req-abc" || seen.ctxRequestID != "req-abc" {
		t.Errorf("server saw x-request-id %q, context %q; want req-abc in both", seen.requestID, seen.ctxRequestID)
	}
	// Both sides read the one step clock, so the first call must have ended
	// on both before the second begins, or its duration takes a step more.
	waitN(ctx, t, "client", p.clientEnds, 1)
	waitN(ctx, t, "server", p.serverEnds, 1)
	if _, err := p.client.Check(ctx, req); err != nil {
		t.Fatalf("check: %v", err)
	}
	generated := <-p.service.seen
	if len(generated.requestID) != 36 || generated.ctxRequestID != generated.requestID {
		t.Errorf("generated x-request-id %q (context %q), want one UUID in both", generated.requestID, generated.ctxRequestID)
	}
	waitN(ctx, t, "client", p.clientEnds, 1)
	waitN(ctx, t, "server", p.serverEnds, 1)

	clientRecs, serverRecs := clientLog.records(t), serverLog.records(t)
	if len(clientRecs) != 2 || len(serverRecs) != 2 {
		t.Fatalf("%d client and %d server records, want 2 each", len(clientRecs), len(serverRecs))
	}
	var clientSpan trace.SpanContext
	for _, s := range clientSpans.Ended() {
		if a, ok := spanAttr(s, "guid:x-request-id"); ok && a.AsString() == "req-abc" {
			clientSpan = s.SpanContext()
			wantAttr(t, s, "upstream_cluster", attrString(route.Cluster))
			wantAttr(t, s, "upstream_address", attrString(route.Endpoint))
		}
	}
	reqWire := float64(proto.Size(req) + 5)
	respWire := float64(proto.Size(&healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING}) + 5)
	common := map[string]any{
		"msg": "access", "method": "POST", "path": "/grpc.health.v1.Health/Check", "protocol": "HTTP/2",
		"response_code": 200.0, "grpc_status": "0", "response_flags": "-", "duration": 25.0,
		"request_id": "req-abc",
		"trace_id":   clientSpan.TraceID().String(), "start_time": "2026-01-02T03:04:05.025Z",
	}
	wantRecord(t, "client", clientRecs[0], common, map[string]any{
		"direction": "outbound", "upstream_cluster": route.Cluster, "upstream_host": route.Endpoint,
		"peer_principal": payments.Principal,
	})
	wantRecord(t, "server", serverRecs[0], common, map[string]any{
		"direction": "inbound", "upstream_cluster": fmt.Sprintf("inbound|%d||", p.serverAddr.Port),
		"upstream_host": p.serverAddr.String(), "peer_principal": checkout.Principal,
	})
	// Wire bytes, headers included (TestGRPCByteMetricsAreWireBytes holds
	// them to the wire): more than the messages alone.
	for _, rec := range []map[string]any{clientRecs[0], serverRecs[0]} {
		if got, _ := rec["bytes_received"].(float64); got <= reqWire {
			t.Errorf("%s: bytes_received %v, want more than the request message's %v", rec["direction"], got, reqWire)
		}
		if got, _ := rec["bytes_sent"].(float64); got <= respWire {
			t.Errorf("%s: bytes_sent %v, want more than the response message's %v", rec["direction"], got, respWire)
		}
	}
	if clientRecs[1]["request_id"] != generated.requestID || serverRecs[1]["request_id"] != generated.requestID {
		t.Errorf("second request logged as %v (client), %v (server), want %s", clientRecs[1]["request_id"], serverRecs[1]["request_id"], generated.requestID)
	}
}

func wantRecord(t *testing.T, who string, rec map[string]any, wants ...map[string]any) {
	t.Helper()
	for _, want := range wants {
		for k, v := range want {
			if rec[k] != v {
				t.Errorf("%s record: %s = %v (%T), want %v (%T)", who, k, rec[k], rec[k], v, v)
			}
		}
	}
}

func TestAccessLogFilterAndSampling(t *testing.T) {
	ok := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/fail" {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	})
	serve := func(h http.Handler, path, id string) {
		req := httptest.NewRequest(http.MethodGet, path, nil)
		req.Header.Set("x-request-id", id)
		h.ServeHTTP(httptest.NewRecorder(), req)
	}

	var errorsOnly logBuffer
	h := telemetry.Middleware(ok, telemetry.WithAccessLog(newJSONLogger(&errorsOnly), telemetry.AccessLogConfig{
		Filter: func(e telemetry.Entry) bool { return e.ResponseCode >= 500 },
	}))
	serve(h, "/fine", "a")
	serve(h, "/fail", "b")
	recs := errorsOnly.records(t)
	if len(recs) != 1 || recs[0]["request_id"] != "b" || recs[0]["response_code"] != 503.0 || recs[0]["direction"] != "inbound" {
		t.Errorf("filtered log %v, want only the 503", recs)
	}

	// Two hops sampling at the same rate log the same requests, chosen by
	// request ID.
	var hop1, hop2 logBuffer
	half := telemetry.AccessLogConfig{SampleRate: 0.5}
	h1 := telemetry.Middleware(ok, telemetry.WithAccessLog(newJSONLogger(&hop1), half))
	h2 := telemetry.Middleware(ok, telemetry.WithAccessLog(newJSONLogger(&hop2), half))
	const n = 200
	for i := range n {
		id := fmt.Sprintf("request-%d", i)
		serve(h1, "/", id)
		serve(h2, "/", id)
	}
	r1, r2 := hop1.records(t), hop2.records(t)
	// Five binomial standard deviations (sqrt(200/4) ~ 7) either side of 100.
	if len(r1) < n/2-35 || len(r1) > n/2+35 {
		t.Errorf("sampling at 0.5 logged %d of %d requests", len(r1), n)
	}
	if len(r1) != len(r2) {
		t.Fatalf("hops logged %d and %d requests, want the same", len(r1), len(r2))
	}
	for i := range r1 {
		if r1[i]["request_id"] != r2[i]["request_id"] {
			t.Errorf("record %d: hop 1 logged %v, hop 2 %v", i, r1[i]["request_id"], r2[i]["request_id"])
		}
	}

	// An invalid rate is reported and logs everything.
	var all, warnings logBuffer
	bad := telemetry.Middleware(ok, telemetry.WithLogger(newJSONLogger(&warnings)),
		telemetry.WithAccessLog(newJSONLogger(&all), telemetry.AccessLogConfig{SampleRate: 1.5}))
	for i := range 10 {
		serve(bad, "/", fmt.Sprint(i))
	}
	if got := len(all.records(t)); got != 10 {
		t.Errorf("invalid rate logged %d of 10", got)
	}
	if w := warnings.records(t); len(w) != 1 || !strings.Contains(fmt.Sprint(w[0]["error"]), "SampleRate 1.5") {
		t.Errorf("warnings %v, want one naming SampleRate 1.5", w)
	}
	if err := (telemetry.AccessLogConfig{SampleRate: -0.1}).Validate(); err == nil {
		t.Error("negative SampleRate validated")
	}
}

// The router's route info is shared by a call's attempts; the attempt
// number comes from the header the retry interceptor sets (gRFC A6).
func TestGRPCRetryCountFromPreviousAttemptsHeader(t *testing.T) {
	for _, interceptors := range []bool{false, true} {
		t.Run(fmt.Sprintf("interceptors=%t", interceptors), func(t *testing.T) {
			ctx := testutil.Context(t)
			clientTP, clientSpans := newRecordingProvider(t, sdktrace.AlwaysSample())
			clientCreds, serverCreds := mtlsPair(t)
			route := telemetry.RouteInfo{Cluster: "outbound|8080|v2|" + paymentsHost, Subset: "v2", Endpoint: "10.0.0.7:8080"}
			p := startPair(t, pairConfig{
				clientCreds: clientCreds, serverCreds: serverCreds,
				clientOpts:   []telemetry.GRPCOption{telemetry.WithTracerProvider(clientTP)},
				wrapClient:   func(h stats.Handler) stats.Handler { return router{Handler: h, route: route} },
				interceptors: interceptors,
			})
			attemptCtx := metadata.AppendToOutgoingContext(ctx, "grpc-previous-rpc-attempts", "2")
			if _, err := p.client.Check(attemptCtx, &healthpb.HealthCheckRequest{Service: "payments"}); err != nil {
				t.Fatalf("check: %v", err)
			}
			waitN(ctx, t, "client", p.clientEnds, 1)
			for _, s := range clientSpans.Ended() {
				if s.SpanKind() != trace.SpanKindClient {
					continue
				}
				if v, ok := spanAttr(s, "retry.count"); !ok || v.AsInt64() != 2 {
					t.Fatalf("client span retry.count = %v (set %t), want 2", v.AsInt64(), ok)
				}
				return
			}
			t.Fatal("no client span")
		})
	}
}

// TestTap: a tap sees every request, whatever the access log samples, up
// to its subscriber's buffer, counting what it drops; Close stops
// delivery; subscribers are bounded.
func TestTap(t *testing.T) {
	tap := telemetry.NewTap()
	var logged logBuffer
	h := telemetry.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusTeapot)
	}), telemetry.WithTap(tap), telemetry.WithAccessLog(newJSONLogger(&logged), telemetry.AccessLogConfig{
		Filter: func(telemetry.Entry) bool { return false },
	}))
	serve := func(n int) {
		for i := range n {
			req := httptest.NewRequest(http.MethodPost, fmt.Sprintf("/pay/%d?token=secret", i), nil)
			req.Header.Set("Authorization", "Bearer secret")
			h.ServeHTTP(httptest.NewRecorder(), req)
		}
	}
	serve(3) // nobody tapping: nothing kept
	sub, err := tap.Subscribe(4)
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Close()
	serve(6)
	for i := range 4 {
		e := <-sub.Entries()
		if e.Method != http.MethodPost || e.Path != fmt.Sprintf("/pay/%d", i) || e.ResponseCode != http.StatusTeapot || !e.Inbound {
			t.Errorf("entry %d = %+v", i, e)
		}
	}
	if sub.Dropped() != 2 || len(sub.Entries()) != 0 {
		t.Errorf("dropped %d, buffered %d; want 2 dropped of 6 into a buffer of 4", sub.Dropped(), len(sub.Entries()))
	}
	if n := len(logged.records(t)); n != 0 {
		t.Errorf("the log's filter refused every entry, yet %d were logged", n)
	}
	sub.Close()
	sub.Close()
	serve(1)
	if len(sub.Entries()) != 0 {
		t.Error("an entry reached a closed subscription")
	}
	var subs []*telemetry.TapSubscription
	for range telemetry.MaxTapSubscribers {
		s, err := tap.Subscribe(1)
		if err != nil {
			t.Fatal(err)
		}
		subs = append(subs, s)
	}
	if _, err := tap.Subscribe(1); !errors.Is(err, telemetry.ErrTapBusy) {
		t.Errorf("subscriber %d: %v, want ErrTapBusy", telemetry.MaxTapSubscribers+1, err)
	}
	for _, s := range subs {
		s.Close()
	}
	if s, err := tap.Subscribe(1); err != nil {
		t.Errorf("after Close, Subscribe: %v", err)
	} else {
		s.Close()
	}
}

// TestTapNobodyReadsDoesNotAllocate: a tap without subscribers costs a
// request no allocation (one atomic load).
func TestTapNobodyReadsDoesNotAllocate(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector changes allocation counts")
	}
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {})
	serve := func(h http.Handler) float64 {
		req := httptest.NewRequest(http.MethodGet, "/", nil)
		w := httptest.NewRecorder()
		return testing.AllocsPerRun(200, func() { h.ServeHTTP(w, req) })
	}
	without, with := serve(telemetry.Middleware(h)), serve(telemetry.Middleware(h, telemetry.WithTap(telemetry.NewTap())))
	if with != without {
		t.Errorf("a request allocates %v times with an unread tap, %v without", with, without)
	}
}
