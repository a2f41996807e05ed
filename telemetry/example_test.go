package telemetry_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"runtime"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"mesh/telemetry"
)

// traceReporter is a health service that prints the trace its requests
// belong to.
type traceReporter struct {
	healthpb.UnimplementedHealthServer
}

func (traceReporter) Check(ctx context.Context, _ *healthpb.HealthCheckRequest) (*healthpb.HealthCheckResponse, error) {
	fmt.Println("server sees trace", trace.SpanContextFromContext(ctx).TraceID())
	return &healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING}, nil
}

// A client and a server on loopback: the caller's trace reaches the service
// method. A real program gives its SDK TracerProvider an exporter; the span
// recorder used here just keeps the finished spans in memory.
func ExampleNewClientHandler() {
	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	defer func() { _ = tp.Shutdown(context.Background()) }()

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	srv := grpc.NewServer(grpc.StatsHandler(telemetry.NewServerHandler(telemetry.WithTracerProvider(tp))))
	healthpb.RegisterHealthServer(srv, traceReporter{})
	go func() { _ = srv.Serve(lis) }()
	defer srv.Stop()

	conn, err := grpc.NewClient("passthrough:///"+lis.Addr().String(),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithStatsHandler(telemetry.NewClientHandler(telemetry.WithTracerProvider(tp))),
	)
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()

	// As if this request continued a trace that reached us from elsewhere.
	traceID, _ := trace.TraceIDFromHex("4bf92f3577b34da6a3ce929d0e0e4736")
	spanID, _ := trace.SpanIDFromHex("00f067aa0ba902b7")
	ctx := trace.ContextWithRemoteSpanContext(context.Background(), trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: traceID, SpanID: spanID, TraceFlags: trace.FlagsSampled,
	}))
	if _, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		log.Fatal(err)
	}

	// The client span has ended by the time a unary call returns.
	for _, s := range spans.Ended() {
		if s.SpanKind() == trace.SpanKindClient {
			fmt.Println("client span", s.Name(), "in trace", s.SpanContext().TraceID(), "under", s.Parent().SpanID())
		}
	}
	// Output:
	// server sees trace 4bf92f3577b34da6a3ce929d0e0e4736
	// client span grpc.health.v1.Health/Check in trace 4bf92f3577b34da6a3ce929d0e0e4736 under 00f067aa0ba902b7
}

// Server spans can carry attributes that identify the workload, and read a
// propagation format other than the default W3C one.
func ExampleNewServerHandler() {
	tp := sdktrace.NewTracerProvider() // add sdktrace.WithBatcher(exporter) to export spans
	defer func() { _ = tp.Shutdown(context.Background()) }()

	handler := telemetry.NewServerHandler(
		telemetry.WithTracerProvider(tp),
		telemetry.WithPropagator(propagation.TraceContext{}),
		telemetry.WithAttributes(attribute.String("service.namespace", "shop")),
	)
	// ServerOptions installs the stats handler and the interceptors that send
	// this workload's peer metadata back to callers.
	srv := grpc.NewServer(handler.ServerOptions()...)
	defer srv.Stop()
	// Register services, then srv.Serve(listener).
}

// Any OpenTelemetry propagator can write gRPC metadata through
// MetadataCarrier.
func ExampleMetadataCarrier() {
	traceID, _ := trace.TraceIDFromHex("4bf92f3577b34da6a3ce929d0e0e4736")
	spanID, _ := trace.SpanIDFromHex("00f067aa0ba902b7")
	ctx := trace.ContextWithSpanContext(context.Background(), trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: traceID, SpanID: spanID, TraceFlags: trace.FlagsSampled,
	}))

	md := metadata.MD{}
	telemetry.DefaultPropagator().Inject(ctx, telemetry.MetadataCarrier(md))
	fmt.Println(md.Get("traceparent")[0])
	// Output:
	// 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01
}

// Reading trace context back out of metadata, as a server would.
func ExampleMetadataCarrier_extract() {
	md := metadata.Pairs("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00")
	ctx := telemetry.DefaultPropagator().Extract(context.Background(), telemetry.MetadataCarrier(md))
	sc := trace.SpanContextFromContext(ctx)
	fmt.Println(sc.TraceID(), sc.SpanID(), "sampled:", sc.IsSampled(), "remote:", sc.IsRemote())
	// Output:
	// 4bf92f3577b34da6a3ce929d0e0e4736 00f067aa0ba902b7 sampled: false remote: true
}

// Istio's standard metrics for a net/http server and its client, read here
// through an SDK ManualReader; a real program registers the OpenTelemetry
// Prometheus exporter instead, and the series come out under Istio's names.
func ExampleMiddleware() {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer func() { _ = mp.Shutdown(context.Background()) }()

	payments := telemetry.Workload{Name: "payments-v1", Namespace: "shop", App: "payments", Version: "v1"}
	checkout := telemetry.Workload{Name: "checkout-v1", Namespace: "shop", App: "checkout", Version: "v1"}
	srv := httptest.NewServer(telemetry.Middleware(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "ok")
	}), telemetry.WithWorkload(payments)))
	defer srv.Close()

	client := &http.Client{Transport: telemetry.Transport(http.DefaultTransport,
		telemetry.WithMeterProvider(mp), telemetry.WithWorkload(checkout),
		telemetry.WithService("payments.shop.svc.cluster.local"))}
	// Counts are reported while the Transport is reachable; a real program
	// keeps its client for as long as it calls.
	defer runtime.KeepAlive(client)
	resp, err := client.Get(srv.URL)
	if err != nil {
		log.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close() // the client records once the body is done

	var rm metricdata.ResourceMetrics
	_ = reader.Collect(context.Background(), &rm)
	for _, m := range rm.ScopeMetrics[0].Metrics {
		if sum, ok := m.Data.(metricdata.Sum[int64]); ok {
			for _, pt := range sum.DataPoints {
				label := func(k string) string { v, _ := pt.Attributes.Value(attribute.Key(k)); return v.AsString() }
				fmt.Printf("%s{reporter=%q, source_workload=%q, destination_workload=%q, destination_service_name=%q, response_code=%q} %d\n",
					m.Name, label("reporter"), label("source_workload"), label("destination_workload"),
					label("destination_service_name"), label("response_code"), pt.Value)
			}
		}
	}
	http.DefaultTransport.(*http.Transport).CloseIdleConnections()
	// Output:
	// istio_requests_total{reporter="source", source_workload="checkout-v1", destination_workload="payments-v1", destination_service_name="payments", response_code="200"} 1
}

// The headers of Istio's metadata exchange, and reading them back.
func ExamplePeerMetadata() {
	id, value, err := telemetry.PeerMetadata(telemetry.Workload{
		Name: "payments-v1", Namespace: "shop", App: "payments", Version: "v1", Cluster: "Kubernetes",
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(telemetry.HeaderPeerMetadataID+":", id)
	w, err := telemetry.ParsePeerMetadata(value)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(w.Name, w.Namespace, w.App, w.Version, w.CanonicalService, w.CanonicalRevision, w.Cluster)
	// Output:
	// x-envoy-peer-metadata-id: sidecar~~payments-v1.shop~shop.svc.cluster.local
	// payments-v1 shop payments v1 payments v1 Kubernetes
}

// B3 writes the multi-header form Envoy reads by default.
func ExampleB3() {
	traceID, _ := trace.TraceIDFromHex("4bf92f3577b34da6a3ce929d0e0e4736")
	spanID, _ := trace.SpanIDFromHex("00f067aa0ba902b7")
	ctx := trace.ContextWithSpanContext(context.Background(), trace.NewSpanContext(trace.SpanContextConfig{
		TraceID: traceID, SpanID: spanID, TraceFlags: trace.FlagsSampled,
	}))
	md := metadata.MD{}
	telemetry.B3{}.Inject(ctx, telemetry.MetadataCarrier(md))
	for _, k := range telemetry.MetadataCarrier(md).Keys() {
		fmt.Println(k+":", md.Get(k)[0])
	}
	// Output:
	// x-b3-sampled: 1
	// x-b3-spanid: 00f067aa0ba902b7
	// x-b3-traceid: 4bf92f3577b34da6a3ce929d0e0e4736
}

// The single b3 header, for proxies configured to read it.
func ExampleB3_singleHeader() {
	md := metadata.Pairs("b3", "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1")
	ctx := telemetry.B3{SingleHeader: true}.Extract(context.Background(), telemetry.MetadataCarrier(md))
	sc := trace.SpanContextFromContext(ctx)
	fmt.Println(sc.TraceID(), sc.SpanID(), "sampled:", sc.IsSampled())
	// Output:
	// 4bf92f3577b34da6a3ce929d0e0e4736 00f067aa0ba902b7 sampled: true
}

// Access logs go to any slog.Logger; this one drops the timing fields to
// keep the output stable.
func ExampleWithAccessLog() {
	logger := slog.New(slog.NewTextHandler(os.Stdout, &slog.HandlerOptions{
		ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			switch a.Key {
			case slog.TimeKey, "start_time", "duration", "trace_id":
				return slog.Attr{}
			}
			return a
		},
	}))
	h := telemetry.Middleware(http.NotFoundHandler(),
		telemetry.WithAccessLog(logger, telemetry.AccessLogConfig{
			Filter: func(e telemetry.Entry) bool { return e.ResponseCode >= 400 },
		}))
	req := httptest.NewRequest(http.MethodGet, "/missing", nil)
	req.Header.Set("x-request-id", "7c1f8a5e-0000-4000-8000-000000000001")
	h.ServeHTTP(httptest.NewRecorder(), req)
	// Output:
	// level=INFO msg=access direction=inbound method=GET path=/missing protocol=HTTP/1.1 authority=example.com response_code=404 grpc_status="" response_flags=- upstream_cluster="" upstream_host="" bytes_received=103 bytes_sent=144 peer_principal="" request_id=7c1f8a5e-0000-4000-8000-000000000001
}

// The router tells telemetry where a request went, on the context the
// handler tagged; spans and access logs then name the cluster and endpoint.
func ExampleSetRouteInfo() {
	inner := roundTripperFunc(func(r *http.Request) (*http.Response, error) {
		ok := telemetry.SetRouteInfo(r.Context(), telemetry.RouteInfo{
			Cluster: "outbound|8080|v2|payments.shop.svc.cluster.local", Subset: "v2", Endpoint: "10.0.0.7:8080",
		})
		fmt.Println("route recorded:", ok)
		return &http.Response{StatusCode: http.StatusOK, Body: http.NoBody, Request: r}, nil
	})
	client := &http.Client{Transport: telemetry.Transport(inner)}
	resp, err := client.Get("http://payments.shop.svc.cluster.local:8080/")
	if err != nil {
		log.Fatal(err)
	}
	_ = resp.Body.Close()
	// Output:
	// route recorded: true
}

type roundTripperFunc func(*http.Request) (*http.Response, error)

func (f roundTripperFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// The interceptors record what the stats handlers record, at a fraction of
// the cost: here Istio's request count, as each side reports it. A real
// program gives its MeterProvider a Prometheus exporter and serves it
// through EnvoyBucketLabels.
func ExampleNewClientInterceptor() {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer func() { _ = mp.Shutdown(context.Background()) }()

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	server := telemetry.NewServerInterceptor(telemetry.WithMeterProvider(mp),
		telemetry.WithWorkload(telemetry.Workload{Name: "payments-v1", Namespace: "shop", App: "payments", Version: "v1"}))
	srv := grpc.NewServer(server.ServerOptions()...)
	healthpb.RegisterHealthServer(srv, health.NewServer())
	go func() { _ = srv.Serve(lis) }()
	defer srv.Stop()

	client := telemetry.NewClientInterceptor(telemetry.WithMeterProvider(mp), telemetry.WithService("payments.shop.svc.cluster.local"),
		telemetry.WithWorkload(telemetry.Workload{Name: "checkout-v1", Namespace: "shop", App: "checkout", Version: "v1"}))
	conn, err := grpc.NewClient("passthrough:///"+lis.Addr().String(),
		append(client.DialOptions(), grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	if _, err := healthpb.NewHealthClient(conn).Check(context.Background(), &healthpb.HealthCheckRequest{}); err != nil {
		log.Fatal(err)
	}
	// Both sides have recorded: the server's interceptor before it sent
	// the response, the client's before Check returned.
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		log.Fatal(err)
	}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name != telemetry.MetricRequestsTotal {
				continue
			}
			for _, pt := range m.Data.(metricdata.Sum[int64]).DataPoints {
				reporter, _ := pt.Attributes.Value("reporter")
				src, _ := pt.Attributes.Value("source_workload")
				dst, _ := pt.Attributes.Value("destination_workload")
				fmt.Println(reporter.AsString(), src.AsString(), "->", dst.AsString(), pt.Value)
			}
		}
	}
	// Unordered output:
	// source checkout-v1 -> payments-v1 1
	// destination checkout-v1 -> payments-v1 1
}

// An authorization interceptor run inside telemetry's: the calls it
// refuses are measured too, and grpc-go builds no chain per call.
func ExampleServerInterceptor_ServerOptionsAround() {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer func() { _ = mp.Shutdown(context.Background()) }()

	denyAll := func(context.Context, any, *grpc.UnaryServerInfo, grpc.UnaryHandler) (any, error) {
		return nil, status.Error(codes.PermissionDenied, "RBAC: access denied")
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	server := telemetry.NewServerInterceptor(telemetry.WithMeterProvider(mp))
	srv := grpc.NewServer(server.ServerOptionsAround(denyAll, nil)...)
	healthpb.RegisterHealthServer(srv, health.NewServer())
	go func() { _ = srv.Serve(lis) }()
	defer srv.Stop()

	conn, err := grpc.NewClient("passthrough:///"+lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	_, err = healthpb.NewHealthClient(conn).Check(context.Background(), &healthpb.HealthCheckRequest{})
	fmt.Println(status.Code(err))

	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		log.Fatal(err)
	}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name == telemetry.MetricRequestsTotal {
				for _, pt := range m.Data.(metricdata.Sum[int64]).DataPoints {
					code, _ := pt.Attributes.Value("grpc_response_status")
					fmt.Println("requests with grpc_response_status", code.AsString()+":", pt.Value)
				}
			}
		}
	}
	// Output:
	// PermissionDenied
	// requests with grpc_response_status 7: 1
}
