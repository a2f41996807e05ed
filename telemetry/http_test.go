package telemetry_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strings"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"

	"mesh/identity/identitytest"
	"mesh/internal/testutil"
	"mesh/telemetry"
)

// httpSeen is what the test HTTP handler saw of one request.
type httpSeen struct {
	requestID     string
	ctxRequestID  string
	spanContext   trace.SpanContext
	body          string
	peerMetaValue string
}

func TestHTTPMiddlewareAndTransport(t *testing.T) {
	ctx := testutil.Context(t)
	clientMeter, clientReader := newMeter(t)
	serverMeter, serverReader := newMeter(t)
	clientTP, clientSpans := newRecordingProvider(t, sdktrace.AlwaysSample())
	serverTP, serverSpans := newRecordingProvider(t, nil)

	seen := make(chan httpSeen, 4)
	const responseBody = "paid in full"
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		id, _ := telemetry.RequestIDFromContext(r.Context())
		seen <- httpSeen{
			requestID: r.Header.Get("x-request-id"), ctxRequestID: id,
			spanContext: trace.SpanContextFromContext(r.Context()), body: string(body),
			peerMetaValue: r.Header.Get(telemetry.HeaderPeerMetadata),
		}
		if r.URL.Path == "/missing" {
			http.NotFound(w, r)
			return
		}
		_, _ = io.WriteString(w, responseBody)
	})
	srv := httptest.NewServer(telemetry.Middleware(handler,
		telemetry.WithMeterProvider(serverMeter), telemetry.WithTracerProvider(serverTP),
		telemetry.WithWorkload(payments), telemetry.WithService(paymentsHost),
		telemetry.WithClock(stepClock(25*time.Millisecond))))
	t.Cleanup(srv.Close)
	// Requests go through a tap, which sizes them as Envoy would.
	tap := startHTTPTap(t, srv.Listener.Addr().String())
	srv.URL = "http://" + tap.addr()
	client := &http.Client{Transport: telemetry.Transport(srv.Client().Transport,
		telemetry.WithMeterProvider(clientMeter), telemetry.WithTracerProvider(clientTP),
		telemetry.WithWorkload(checkout), telemetry.WithService(paymentsHost),
		telemetry.WithClock(stepClock(25*time.Millisecond)))}
	// The meter reports a Transport's counts while it is reachable.
	defer runtime.KeepAlive(client)

	const requestBody = "amount=42"
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL+"/pay", strings.NewReader(requestBody))
	if err != nil {
		t.Fatalf("new request: %v", err)
	}
	req.Header.Set("x-request-id", "req-1")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("post: %v", err)
	}
	got, _ := io.ReadAll(resp.Body)
	_ = resp.Body.Close()
	if string(got) != responseBody {
		t.Fatalf("response %q, want %q", got, responseBody)
	}
	if len(req.Header) != 1 {
		t.Errorf("Transport changed the caller's request headers: %v", req.Header)
	}
	if resp.Header.Get(telemetry.HeaderPeerMetadata) == "" || resp.Header.Get(telemetry.HeaderPeerMetadataID) == "" {
		t.Errorf("response headers %v lack the server's peer metadata", resp.Header)
	}
	first := <-seen
	if first.requestID != "req-1" || first.ctxRequestID != "req-1" || first.body != requestBody {
		t.Errorf("handler saw request ID %q (context %q) and body %q, want req-1 and %q", first.requestID, first.ctxRequestID, first.body, requestBody)
	}
	if first.peerMetaValue == "" {
		t.Error("handler saw no client peer metadata")
	}

	resp, err = client.Get(srv.URL + "/missing")
	if err != nil {
		t.Fatalf("get: %v", err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	second := <-seen
	waitRequests(ctx, t, serverReader, 2)
	if len(second.requestID) != 36 || second.requestID != second.ctxRequestID {
		t.Errorf("generated request ID %q (context %q), want one UUID in both", second.requestID, second.ctxRequestID)
	}

	// Traces: the server span is the client span's child.
	client1 := findSpan(t, clientSpans, func(s sdktrace.ReadOnlySpan) bool { return attrIs(s, "url.path", "/pay") })
	server1 := findSpan(t, serverSpans, func(s sdktrace.ReadOnlySpan) bool { return attrIs(s, "url.path", "/pay") })
	if server1.Parent().SpanID() != client1.SpanContext().SpanID() || server1.SpanContext().TraceID() != client1.SpanContext().TraceID() {
		t.Errorf("server span under %v in %v, want under client span %v in %v", server1.Parent().SpanID(), server1.SpanContext().TraceID(),
			client1.SpanContext().SpanID(), client1.SpanContext().TraceID())
	}
	if first.spanContext.SpanID() != server1.SpanContext().SpanID() {
		t.Error("handler's context does not hold the server span")
	}
	for _, s := range []sdktrace.ReadOnlySpan{client1, server1} {
		wantAttr(t, s, "guid:x-request-id", attribute.StringValue("req-1"))
		wantAttr(t, s, "http.request.method", attribute.StringValue("POST"))
		wantAttr(t, s, "http.response.status_code", attribute.IntValue(200))
		if s.Name() != "POST" {
			t.Errorf("span name %q, want POST", s.Name())
		}
	}

	common := map[string]string{
		"source_workload": "checkout-v1", "source_app": "checkout", "source_principal": checkout.Principal,
		"destination_workload": "payments-v2", "destination_canonical_revision": "v2",
		"destination_principal": payments.Principal, "destination_service": paymentsHost,
		"destination_service_name": "payments", "destination_service_namespace": "shop",
		"request_protocol": "http", "grpc_response_status": "", "response_flags": "-",
	}
	for _, side := range []struct {
		reporter, policy string
	}{
		{reporter: "source", policy: "unknown"},
		{reporter: "destination", policy: "none"},
	} {
		reader := clientReader
		if side.reporter == "destination" {
			reader = serverReader
		}
		metrics := collect(t, reader)
		points := requestCounts(t, metrics)
		if len(points) != 2 {
			t.Fatalf("%s: %d series, want 2 (200 and 404)", side.reporter, len(points))
		}
		for _, pt := range points {
			code, _ := pt.Attributes.Value("response_code")
			want := map[string]string{"reporter": side.reporter, "connection_security_policy": side.policy}
			for k, v := range common {
				want[k] = v
			}
			// Plaintext: no principals, as Istio reports without mTLS.
			want["source_principal"], want["destination_principal"] = "unknown", "unknown"
			if side.reporter == "source" {
				want["source_principal"] = checkout.Principal
			} else {
				want["destination_principal"] = payments.Principal
			}
			if code.AsString() != "200" && code.AsString() != "404" {
				t.Errorf("%s: response_code %q", side.reporter, code.AsString())
			}
			wantLabels(t, side.reporter+" "+code.AsString(), pt.Attributes, want)
		}
		// Sizes are wire sizes, headers included, as Envoy's: held to what
		// the tap saw, within what either side cannot see of the other's
		// headers (net/http adds Accept-Encoding, Content-Length and the like).
		wireReqs, wireResps := tap.exchanges(t)
		if len(wireReqs) != 2 || len(wireResps) != 2 {
			t.Fatalf("tap saw %d requests and %d responses, want 2 of each", len(wireReqs), len(wireResps))
		}
		for _, c := range []struct {
			metric string
			wire   []int64
		}{{telemetry.MetricRequestBytes, wireReqs}, {telemetry.MetricResponseBytes, wireResps}} {
			for _, h := range histogram[int64](t, metrics, c.metric) {
				code, _ := h.Attributes.Value("response_code")
				want := c.wire[0]
				if code.AsString() == "404" {
					want = c.wire[1]
				}
				t.Logf("%s %s for %s: recorded %d, wire %d", side.reporter, c.metric, code.AsString(), h.Sum, want)
				if d := h.Sum - want; h.Count != 1 || d < -wireTolerance || d > wireTolerance {
					t.Errorf("%s %s for %s: count %d sum %d, the wire carried %d", side.reporter, c.metric, code.AsString(), h.Count, h.Sum, want)
				}
			}
		}
		for _, h := range histogram[float64](t, metrics, telemetry.MetricRequestDuration) {
			if h.Count != 1 || h.Sum != 25 {
				t.Errorf("%s duration: count %d sum %v, want one of 25 ms", side.reporter, h.Count, h.Sum)
			}
		}
	}
}

func TestHTTPMutualTLSPrincipals(t *testing.T) {
	ctx := testutil.Context(t)
	clientMeter, clientReader := newMeter(t)
	serverMeter, serverReader := newMeter(t)
	ca, err := identitytest.NewCA("cluster.local")
	if err != nil {
		t.Fatalf("CA: %v", err)
	}
	serverSVID, err := ca.Issue(payments.Principal, time.Hour, paymentsHost)
	if err != nil {
		t.Fatalf("issue: %v", err)
	}
	clientSVID, err := ca.Issue(checkout.Principal, time.Hour)
	if err != nil {
		t.Fatalf("issue: %v", err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Root())
	toCert := func(certs []*x509.Certificate, key any) tls.Certificate {
		c := tls.Certificate{PrivateKey: key}
		for _, x := range certs {
			c.Certificate = append(c.Certificate, x.Raw)
		}
		return c
	}
	srv := httptest.NewUnstartedServer(telemetry.Middleware(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusAccepted)
	}), telemetry.WithMeterProvider(serverMeter), telemetry.WithWorkload(payments)))
	srv.TLS = &tls.Config{
		Certificates: []tls.Certificate{toCert(serverSVID.Certificates, serverSVID.PrivateKey)},
		ClientCAs:    roots, ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS13,
	}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	base := &http.Transport{TLSClientConfig: &tls.Config{
		Certificates: []tls.Certificate{toCert(clientSVID.Certificates, clientSVID.PrivateKey)},
		RootCAs:      roots, ServerName: paymentsHost, MinVersion: tls.VersionTLS13,
	}}
	t.Cleanup(base.CloseIdleConnections)
	client := &http.Client{Transport: telemetry.Transport(base, telemetry.WithMeterProvider(clientMeter),
		telemetry.WithWorkload(checkout), telemetry.WithService(paymentsHost))}
	// The meter reports a Transport's counts while it is reachable.
	defer runtime.KeepAlive(client)
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, srv.URL, nil)
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("get: %v", err)
	}
	_ = resp.Body.Close()
	waitRequests(ctx, t, serverReader, 1)

	want := map[string]string{"source_principal": checkout.Principal, "destination_principal": payments.Principal, "response_code": "202"}
	clientPoints := requestCounts(t, collect(t, clientReader))
	want["connection_security_policy"] = "unknown"
	wantLabels(t, "client", clientPoints[0].Attributes, want)
	serverPoints := requestCounts(t, collect(t, serverReader))
	want["connection_security_policy"] = "mutual_tls"
	wantLabels(t, "server", serverPoints[0].Attributes, want)
}

// routingTransport plays mesh's router: it records where it sent the
// request, then passes it on.
type routingTransport struct {
	next http.RoundTripper
	info telemetry.RouteInfo
	ok   chan bool
}

func (rt routingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	rt.ok <- telemetry.SetRouteInfo(r.Context(), rt.info)
	return rt.next.RoundTrip(r)
}

func TestHTTPTransportRecordsRouteAndFailures(t *testing.T) {
	ctx := testutil.Context(t)
	mp, reader := newMeter(t)
	tp, spans := newRecordingProvider(t, sdktrace.AlwaysSample())

	// Nothing listens on this address: the round trip fails.
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	addr := lis.Addr().String()
	_ = lis.Close()
	base := &http.Transport{}
	t.Cleanup(base.CloseIdleConnections)
	route := telemetry.RouteInfo{Cluster: "outbound|8080|v2|" + paymentsHost, Subset: "v2", Endpoint: addr, Retries: 2}
	router := routingTransport{next: base, info: route, ok: make(chan bool, 1)}
	client := &http.Client{Transport: telemetry.Transport(router, telemetry.WithMeterProvider(mp), telemetry.WithTracerProvider(tp))}
	// The meter reports a Transport's counts while it is reachable.
	defer runtime.KeepAlive(client)
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/x", nil)
	if _, err := client.Do(req); err == nil {
		t.Fatal("get from a closed port succeeded")
	}
	if !<-router.ok {
		t.Error("SetRouteInfo found no telemetry slot in the request context")
	}
	points := requestCounts(t, collect(t, reader))
	if len(points) != 1 {
		t.Fatalf("%d series, want 1", len(points))
	}
	wantLabels(t, "failed", points[0].Attributes, map[string]string{"response_code": "0", "response_flags": "UF", "request_protocol": "http"})
	s := onlySpan(t, "client", spans)
	wantAttr(t, s, "upstream_cluster", attribute.StringValue(route.Cluster))
	wantAttr(t, s, "upstream_subset", attribute.StringValue("v2"))
	wantAttr(t, s, "upstream_address", attribute.StringValue(addr))
	wantAttr(t, s, "retry.count", attribute.IntValue(2))
	wantAttr(t, s, "response_flags", attribute.StringValue("UF"))

	if telemetry.SetRouteInfo(context.Background(), route) {
		t.Error("SetRouteInfo on an untagged context reported success")
	}
}

func TestHTTPMiddlewareRecordsPanicsAndNilInput(t *testing.T) {
	mp, reader := newMeter(t)
	h := telemetry.Middleware(http.HandlerFunc(func(http.ResponseWriter, *http.Request) {
		panic(http.ErrAbortHandler)
	}), telemetry.WithMeterProvider(mp))
	func() {
		defer func() {
			if r := recover(); !errors.Is(r.(error), http.ErrAbortHandler) {
				t.Errorf("recovered %v, want the handler's own panic", r)
			}
		}()
		h.ServeHTTP(httptest.NewRecorder(), httptest.NewRequest(http.MethodGet, "/", nil))
	}()
	points := requestCounts(t, collect(t, reader))
	if len(points) != 1 {
		t.Fatalf("%d series, want 1", len(points))
	}
	wantLabels(t, "panic", points[0].Attributes, map[string]string{"response_code": "500", "response_flags": "DC"})

	// A nil handler answers 404; a nil transport falls back to the default.
	rec := httptest.NewRecorder()
	telemetry.Middleware(nil).ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/", nil))
	if rec.Code != http.StatusNotFound {
		t.Errorf("nil handler answered %d, want 404", rec.Code)
	}
	if _, err := telemetry.Transport(nil).RoundTrip(&http.Request{}); err == nil {
		t.Error("round trip of a request without URL succeeded")
	}
}

func findSpan(t *testing.T, rec interface {
	Ended() []sdktrace.ReadOnlySpan
}, match func(sdktrace.ReadOnlySpan) bool) sdktrace.ReadOnlySpan {
	t.Helper()
	for _, s := range rec.Ended() {
		if match(s) {
			return s
		}
	}
	t.Fatalf("no matching span among %v", spanNames(rec.Ended()))
	return nil
}

func attrIs(s sdktrace.ReadOnlySpan, key, value string) bool {
	v, ok := spanAttr(s, attribute.Key(key))
	return ok && v.AsString() == value
}
