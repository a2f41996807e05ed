package telemetry_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"maps"
	"net"
	"slices"
	"sync"
	"testing"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"google.golang.org/grpc"
	grpccodes "google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	"mesh/identity/identitytest"
	"mesh/internal/testutil"
	"mesh/telemetry"
)

// The two workloads of these tests, as Istio would label them.
var (
	checkout = telemetry.Workload{
		Name: "checkout-v1", Namespace: "shop", App: "checkout", Version: "v1",
		Cluster: "Kubernetes", Principal: "spiffe://cluster.local/ns/shop/sa/checkout",
	}
	payments = telemetry.Workload{
		Name: "payments-v2", Namespace: "shop", App: "payments", Version: "v2",
		CanonicalService: "payments", CanonicalRevision: "v2",
		Cluster: "Kubernetes", Principal: "spiffe://cluster.local/ns/shop/sa/payments",
	}
)

const paymentsHost = "payments.shop.svc.cluster.local"

// istioLabelNames is Istio's standard label set, exactly.
var istioLabelNames = []string{
	"reporter",
	"source_workload", "source_workload_namespace", "source_principal", "source_app", "source_version",
	"source_canonical_service", "source_canonical_revision", "source_cluster",
	"destination_workload", "destination_workload_namespace", "destination_principal", "destination_app",
	"destination_version", "destination_service", "destination_service_name", "destination_service_namespace",
	"destination_canonical_service", "destination_canonical_revision", "destination_cluster",
	"request_protocol", "response_code", "grpc_response_status", "response_flags", "connection_security_policy",
}

// newMeter returns an SDK meter provider read through a ManualReader, shut
// down with the test.
func newMeter(t testing.TB) (*sdkmetric.MeterProvider, *sdkmetric.ManualReader) {
	t.Helper()
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	t.Cleanup(func() {
		if err := mp.Shutdown(context.Background()); err != nil {
			t.Errorf("shut down meter provider: %v", err)
		}
	})
	return mp, reader
}

func collect(t *testing.T, reader *sdkmetric.ManualReader) map[string]metricdata.Metrics {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(context.Background(), &rm); err != nil {
		t.Fatalf("collect: %v", err)
	}
	out := map[string]metricdata.Metrics{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			out[m.Name] = m
		}
	}
	return out
}

func labelMap(set attribute.Set) map[string]string {
	out := map[string]string{}
	for _, kv := range set.ToSlice() {
		out[string(kv.Key)] = kv.Value.Emit()
	}
	return out
}

// requestCounts returns istio_requests_total's points as label maps with
// their values.
func requestCounts(t *testing.T, metrics map[string]metricdata.Metrics) []metricdata.DataPoint[int64] {
	t.Helper()
	m, ok := metrics[telemetry.MetricRequestsTotal]
	if !ok {
		t.Fatalf("no %s among %v", telemetry.MetricRequestsTotal, slices.Sorted(maps.Keys(metrics)))
	}
	sum, ok := m.Data.(metricdata.Sum[int64])
	if !ok || !sum.IsMonotonic || sum.Temporality != metricdata.CumulativeTemporality {
		t.Fatalf("%s is %T (monotonic %v), want a cumulative monotonic int64 sum", m.Name, m.Data, sum.IsMonotonic)
	}
	return sum.DataPoints
}

func histogram[N int64 | float64](t *testing.T, metrics map[string]metricdata.Metrics, name string) []metricdata.HistogramDataPoint[N] {
	t.Helper()
	m, ok := metrics[name]
	if !ok {
		t.Fatalf("no %s among %v", name, slices.Sorted(maps.Keys(metrics)))
	}
	h, ok := m.Data.(metricdata.Histogram[N])
	if !ok {
		t.Fatalf("%s is %T, want a histogram", name, m.Data)
	}
	return h.DataPoints
}

func wantLabels(t *testing.T, what string, got attribute.Set, want map[string]string) {
	t.Helper()
	gotMap := labelMap(got)
	if names := slices.Sorted(maps.Keys(gotMap)); !slices.Equal(names, slices.Sorted(slices.Values(istioLabelNames))) {
		t.Errorf("%s: label names %v, want Istio's %v", what, names, istioLabelNames)
	}
	for k, v := range want {
		if gotMap[k] != v {
			t.Errorf("%s: %s = %q, want %q", what, k, gotMap[k], v)
		}
	}
}

// stepClock returns a clock that advances by step on every reading, so each
// handler, reading it once at the start and once at the end of a request,
// measures exactly step.
func stepClock(step time.Duration) func() time.Time {
	var mu sync.Mutex
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	return func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		now = now.Add(step)
		return now
	}
}

// mtlsPair issues SVIDs for the two workloads and returns client and server
// credentials that verify each other, as mesh's mTLS does.
func mtlsPair(t *testing.T) (client, server credentials.TransportCredentials) {
	t.Helper()
	ca, err := identitytest.NewCA("cluster.local")
	if err != nil {
		t.Fatalf("new CA: %v", err)
	}
	clientSVID, err := ca.Issue(checkout.Principal, time.Hour)
	if err != nil {
		t.Fatalf("issue: %v", err)
	}
	serverSVID, err := ca.Issue(payments.Principal, time.Hour, paymentsHost)
	if err != nil {
		t.Fatalf("issue: %v", err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(ca.Root())
	cert := func(certs []*x509.Certificate, key any) tls.Certificate {
		c := tls.Certificate{PrivateKey: key}
		for _, x := range certs {
			c.Certificate = append(c.Certificate, x.Raw)
		}
		return c
	}
	client = credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{cert(clientSVID.Certificates, clientSVID.PrivateKey)},
		RootCAs:      roots,
		ServerName:   paymentsHost,
		MinVersion:   tls.VersionTLS13,
	})
	server = credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{cert(serverSVID.Certificates, serverSVID.PrivateKey)},
		ClientCAs:    roots,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		MinVersion:   tls.VersionTLS13,
	})
	return client, server
}

// grpcPair is a health server and a client connected over loopback.
type grpcPair struct {
	client      healthpb.HealthClient
	service     *healthService
	clientEnds  chan struct{}
	serverEnds  chan struct{}
	serverAddr  *net.TCPAddr
	clientStats stats.Handler
	tap         *wireTap
}

type pairConfig struct {
	clientCreds, serverCreds credentials.TransportCredentials // nil: plaintext
	clientOpts, serverOpts   []telemetry.GRPCOption
	// wrapClient, when set, wraps the client handler, to play the router.
	wrapClient func(stats.Handler) stats.Handler
	// interceptors records through ClientInterceptor and
	// ServerInterceptor instead of the stats handlers (wrapClient unused).
	interceptors bool
	// tap, when set, relays the connection and reads it (plaintext only).
	tap bool
}

func startPair(t *testing.T, cfg pairConfig) *grpcPair {
	t.Helper()
	p := &grpcPair{
		service:    &healthService{seen: make(chan observation, 64)},
		clientEnds: make(chan struct{}, 64),
		serverEnds: make(chan struct{}, 64),
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	p.serverAddr = lis.Addr().(*net.TCPAddr)
	serverCreds := cfg.serverCreds
	if serverCreds == nil {
		serverCreds = insecure.NewCredentials()
	}
	var srv *grpc.Server
	if cfg.interceptors {
		// The notifier is outermost: it signals once telemetry recorded.
		srv = grpc.NewServer(append([]grpc.ServerOption{grpc.Creds(serverCreds),
			grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
				defer func() { p.serverEnds <- struct{}{} }()
				return h(ctx, req)
			}),
			grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
				defer func() { p.serverEnds <- struct{}{} }()
				return h(srv, ss)
			}),
		}, telemetry.NewServerInterceptor(cfg.serverOpts...).ServerOptions()...)...)
	} else {
		sh := telemetry.NewServerHandler(cfg.serverOpts...)
		srv = grpc.NewServer(grpc.Creds(serverCreds),
			grpc.StatsHandler(endNotifier{Handler: sh, ends: p.serverEnds}),
			grpc.ChainUnaryInterceptor(sh.UnaryInterceptor()),
			grpc.ChainStreamInterceptor(sh.StreamInterceptor()))
	}
	healthpb.RegisterHealthServer(srv, p.service)
	testutil.Serve(t, srv, lis)

	clientCreds := cfg.clientCreds
	if clientCreds == nil {
		clientCreds = insecure.NewCredentials()
	}
	dialOpts := []grpc.DialOption{grpc.WithTransportCredentials(clientCreds)}
	if cfg.interceptors {
		dialOpts = append(dialOpts,
			grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
				defer func() { p.clientEnds <- struct{}{} }()
				return invoker(ctx, method, req, reply, cc, opts...)
			}),
			grpc.WithChainStreamInterceptor(func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
				// The attempt ends (and records) before RecvMsg reports it.
				return streamer(ctx, desc, cc, method, append(opts, grpc.OnFinish(func(error) { p.clientEnds <- struct{}{} }))...)
			}))
		dialOpts = append(dialOpts, telemetry.NewClientInterceptor(cfg.clientOpts...).DialOptions()...)
	} else {
		ch := telemetry.NewClientHandler(cfg.clientOpts...)
		if cfg.wrapClient != nil {
			ch = cfg.wrapClient(ch)
		}
		p.clientStats = ch
		dialOpts = append(dialOpts, grpc.WithStatsHandler(endNotifier{Handler: ch, ends: p.clientEnds}))
	}
	target := lis.Addr().String()
	if cfg.tap {
		p.tap = startTap(t, target)
		target = p.tap.addr()
	}
	conn, err := grpc.NewClient("passthrough:///"+target, dialOpts...)
	if err != nil {
		t.Fatalf("new client: %v", err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	p.client = healthpb.NewHealthClient(conn)
	return p
}

// watchToEnd calls Watch for service and reads the stream to its end.
func watchToEnd(ctx context.Context, t *testing.T, client healthpb.HealthClient, service string) {
	t.Helper()
	stream, err := client.Watch(ctx, &healthpb.HealthCheckRequest{Service: service})
	if err != nil {
		t.Fatalf("watch: %v", err)
	}
	for {
		if _, err := stream.Recv(); err != nil {
			return // io.EOF once the server returns
		}
	}
}

// forBothRecorders runs test with the stats handlers and with the
// interceptors, which must record the same.
func forBothRecorders(t *testing.T, test func(t *testing.T, interceptors bool)) {
	t.Run("stats handler", func(t *testing.T) { test(t, false) })
	t.Run("interceptors", func(t *testing.T) { test(t, true) })
}

func waitN(ctx context.Context, t *testing.T, what string, ch <-chan struct{}, n int) {
	t.Helper()
	for i := 0; i < n; i++ {
		select {
		case <-ch:
		case <-ctx.Done():
			t.Fatalf("%s: %d of %d events: %v", what, i, n, ctx.Err())
		}
	}
}

func TestGRPCMetricsCarryIstioLabelsOnBothSides(t *testing.T) {
	forBothRecorders(t, testGRPCMetricsCarryIstioLabelsOnBothSides)
}

func testGRPCMetricsCarryIstioLabelsOnBothSides(t *testing.T, interceptors bool) {
	ctx := testutil.Context(t)
	clientMeter, clientReader := newMeter(t)
	serverMeter, serverReader := newMeter(t)
	clientCreds, serverCreds := mtlsPair(t)
	const step = 25 * time.Millisecond
	p := startPair(t, pairConfig{
		clientCreds: clientCreds, serverCreds: serverCreds, interceptors: interceptors,
		clientOpts: []telemetry.GRPCOption{telemetry.WithMeterProvider(clientMeter), telemetry.WithWorkload(checkout),
			telemetry.WithService(paymentsHost + ":8080"), telemetry.WithClock(stepClock(step))},
		serverOpts: []telemetry.GRPCOption{telemetry.WithMeterProvider(serverMeter), telemetry.WithWorkload(payments),
			telemetry.WithService(paymentsHost), telemetry.WithClock(stepClock(step))},
	})

	req := &healthpb.HealthCheckRequest{Service: "payments"}
	if _, err := p.client.Check(ctx, req); err != nil {
		t.Fatalf("check: %v", err)
	}
	// Each side's calls read one step clock: the first call ends on both
	// sides before the second begins, so each lasts exactly one step.
	waitN(ctx, t, "client", p.clientEnds, 1)
	waitN(ctx, t, "server", p.serverEnds, 1)
	_, err := p.client.Check(ctx, &healthpb.HealthCheckRequest{Service: "missing"})
	if status.Code(err) != grpccodes.NotFound {
		t.Fatalf("check missing: %v, want NotFound", err)
	}
	waitN(ctx, t, "client", p.clientEnds, 1)
	waitN(ctx, t, "server", p.serverEnds, 1)

	common := map[string]string{
		"source_workload": "checkout-v1", "source_workload_namespace": "shop",
		"source_principal": checkout.Principal, "source_app": "checkout", "source_version": "v1",
		"source_canonical_service": "checkout", "source_canonical_revision": "v1", "source_cluster": "Kubernetes",
		"destination_workload": "payments-v2", "destination_workload_namespace": "shop",
		"destination_principal": payments.Principal, "destination_app": "payments", "destination_version": "v2",
		"destination_service": paymentsHost, "destination_service_name": "payments",
		"destination_service_namespace": "shop", "destination_canonical_service": "payments",
		"destination_canonical_revision": "v2", "destination_cluster": "Kubernetes",
		"request_protocol": "grpc", "response_code": "200", "response_flags": "-",
	}
	for _, side := range []struct {
		reporter, policy string
		reader           *sdkmetric.ManualReader
	}{
		{"source", "unknown", clientReader},
		{"destination", "mutual_tls", serverReader},
	} {
		metrics := collect(t, side.reader)
		points := requestCounts(t, metrics)
		if len(points) != 2 {
			t.Fatalf("%s: %d label sets, want 2 (OK and NotFound)", side.reporter, len(points))
		}
		byStatus := map[string]metricdata.DataPoint[int64]{}
		for _, pt := range points {
			v, _ := pt.Attributes.Value("grpc_response_status")
			byStatus[v.AsString()] = pt
		}
		for _, code := range []string{"0", "5"} {
			pt, ok := byStatus[code]
			if !ok {
				t.Fatalf("%s: no point for grpc_response_status %s", side.reporter, code)
			}
			want := maps.Clone(common)
			want["reporter"], want["connection_security_policy"], want["grpc_response_status"] = side.reporter, side.policy, code
			wantLabels(t, side.reporter+" "+code, pt.Attributes, want)
			if pt.Value != 1 {
				t.Errorf("%s %s: count %d, want 1", side.reporter, code, pt.Value)
			}
		}

		for _, h := range histogram[float64](t, metrics, telemetry.MetricRequestDuration) {
			if h.Count != 1 || h.Sum != 25 {
				t.Errorf("%s duration: count %d sum %v, want one request of 25 ms", side.reporter, h.Count, h.Sum)
			}
			// Bucket upper bounds are inclusive: 25 ms lands in (10, 25].
			if i := slices.Index(h.Bounds, 25); i < 0 || h.BucketCounts[i] != 1 {
				t.Errorf("%s duration: bounds %v counts %v, want 25 ms in the le=25 bucket", side.reporter, h.Bounds, h.BucketCounts)
			}
			if len(h.Bounds) != 19 || h.Bounds[0] != 0.5 || h.Bounds[18] != 3600000 {
				t.Errorf("%s duration: bounds %v, want Istio's 19 from 0.5 to 3600000", side.reporter, h.Bounds)
			}
		}
		// Sizes are wire bytes, headers included, as Envoy's are
		// (TestGRPCByteMetricsAreWireBytes holds them to the wire): more
		// than the message alone, in Envoy's buckets.
		resp := &healthpb.HealthCheckResponse{Status: healthpb.HealthCheckResponse_SERVING}
		for _, c := range []struct {
			name string
			body int64
		}{{telemetry.MetricRequestBytes, int64(proto.Size(req) + 5)}, {telemetry.MetricResponseBytes, int64(proto.Size(resp) + 5)}} {
			for _, h := range histogram[int64](t, metrics, c.name) {
				if h.Count != 1 || h.Sum <= c.body {
					t.Errorf("%s %s: count %d sum %d, want one of more than the message's %d bytes", side.reporter, c.name, h.Count, h.Sum, c.body)
				}
				if len(h.Bounds) != 19 || h.Bounds[0] != 0.5 || h.Bounds[18] != 3600000 {
					t.Errorf("%s %s: bounds %v, want Envoy's 19 from 0.5 to 3600000", side.reporter, c.name, h.Bounds)
				}
			}
		}
	}
}

func TestGRPCStreamingLearnsPeerMetadata(t *testing.T) {
	forBothRecorders(t, testGRPCStreamingLearnsPeerMetadata)
}

func testGRPCStreamingLearnsPeerMetadata(t *testing.T, interceptors bool) {
	ctx := testutil.Context(t)
	clientMeter, clientReader := newMeter(t)
	serverMeter, serverReader := newMeter(t)
	p := startPair(t, pairConfig{
		interceptors: interceptors,
		clientOpts:   []telemetry.GRPCOption{telemetry.WithMeterProvider(clientMeter), telemetry.WithWorkload(checkout)},
		serverOpts:   []telemetry.GRPCOption{telemetry.WithMeterProvider(serverMeter), telemetry.WithWorkload(payments)},
	})
	watchToEnd(ctx, t, p.client, "")
	waitN(ctx, t, "client", p.clientEnds, 1)
	waitN(ctx, t, "server", p.serverEnds, 1)

	host := "127.0.0.1" // no WithService: the authority, without its port
	clientPoints := requestCounts(t, collect(t, clientReader))
	if len(clientPoints) != 1 {
		t.Fatalf("client: %d points, want 1", len(clientPoints))
	}
	wantLabels(t, "client", clientPoints[0].Attributes, map[string]string{
		"reporter": "source", "destination_workload": "payments-v2", "destination_app": "payments",
		"destination_principal": "unknown", "source_principal": checkout.Principal,
		"destination_service": host, "destination_service_name": host,
		// No namespace in the host: Istio falls back to the workload's.
		"destination_service_namespace": "shop",
		"connection_security_policy":    "unknown",
	})
	serverPoints := requestCounts(t, collect(t, serverReader))
	if len(serverPoints) != 1 {
		t.Fatalf("server: %d points, want 1", len(serverPoints))
	}
	wantLabels(t, "server", serverPoints[0].Attributes, map[string]string{
		"reporter": "destination", "source_workload": "checkout-v1", "source_canonical_service": "checkout",
		"source_canonical_revision": "v1", "source_principal": "unknown",
		"destination_service": host, "connection_security_policy": "none",
	})
}

func TestGRPCWithoutPeerMetadataReportsUnknown(t *testing.T) {
	ctx := testutil.Context(t)
	clientMeter, clientReader := newMeter(t)
	// Neither side names its workload: nothing is exchanged.
	p := startPair(t, pairConfig{clientOpts: []telemetry.GRPCOption{telemetry.WithMeterProvider(clientMeter)}})
	if _, err := p.client.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("check: %v", err)
	}
	seen := p.service
	select {
	case o := <-seen.seen:
		_ = o
	case <-ctx.Done():
		t.Fatal("no request seen")
	}
	waitN(ctx, t, "client", p.clientEnds, 1)
	points := requestCounts(t, collect(t, clientReader))
	if len(points) != 1 {
		t.Fatalf("%d points, want 1", len(points))
	}
	want := map[string]string{"reporter": "source", "request_protocol": "grpc", "response_code": "200",
		"grpc_response_status": "0", "response_flags": "-", "connection_security_policy": "unknown"}
	for _, name := range istioLabelNames {
		if _, set := want[name]; !set && name != "destination_service" && name != "destination_service_name" {
			want[name] = "unknown"
		}
	}
	wantLabels(t, "anonymous", points[0].Attributes, want)
}

func TestGRPCConnectionFailureIsFlagged(t *testing.T) {
	ctx := testutil.Context(t)
	mp, reader := newMeter(t)
	// A port nothing listens on: take one, then close it.
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	addr := lis.Addr().String()
	_ = lis.Close()
	ends := make(chan struct{}, 4)
	conn, err := grpc.NewClient("passthrough:///"+addr,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithStatsHandler(endNotifier{Handler: telemetry.NewClientHandler(telemetry.WithMeterProvider(mp), telemetry.WithService(paymentsHost)), ends: ends}))
	if err != nil {
		t.Fatalf("new client: %v", err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	_, err = healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if status.Code(err) != grpccodes.Unavailable {
		t.Fatalf("check: %v, want Unavailable", err)
	}
	waitN(ctx, t, "client", ends, 1)
	points := requestCounts(t, collect(t, reader))
	if len(points) != 1 {
		t.Fatalf("%d points, want 1", len(points))
	}
	wantLabels(t, "failed", points[0].Attributes, map[string]string{
		"response_code": "0", "grpc_response_status": "14", "response_flags": "UF",
		"destination_service": paymentsHost,
	})
}

// waitRequests polls reader until istio_requests_total counts total
// requests. An HTTP server records after its handler returns, which can be
// just after the client has read the response.
func waitRequests(ctx context.Context, t *testing.T, reader *sdkmetric.ManualReader, total int64) {
	t.Helper()
	for {
		var rm metricdata.ResourceMetrics
		if err := reader.Collect(ctx, &rm); err != nil {
			t.Fatalf("collect: %v", err)
		}
		var n int64
		for _, sm := range rm.ScopeMetrics {
			for _, m := range sm.Metrics {
				if sum, ok := m.Data.(metricdata.Sum[int64]); ok && m.Name == telemetry.MetricRequestsTotal {
					for _, pt := range sum.DataPoints {
						n += pt.Value
					}
				}
			}
		}
		if n >= total {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%d of %d requests recorded: %v", n, total, ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func TestServerOptionsSendPeerMetadata(t *testing.T) {
	ctx := testutil.Context(t)
	mp, reader := newMeter(t)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	srv := grpc.NewServer(telemetry.NewServerHandler(telemetry.WithWorkload(payments)).ServerOptions()...)
	healthpb.RegisterHealthServer(srv, &healthService{seen: make(chan observation, 4)})
	testutil.Serve(t, srv, lis)
	ends := make(chan struct{}, 4)
	conn, err := grpc.NewClient("passthrough:///"+lis.Addr().String(),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithStatsHandler(endNotifier{Handler: telemetry.NewClientHandler(telemetry.WithMeterProvider(mp)), ends: ends}))
	if err != nil {
		t.Fatalf("new client: %v", err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	// Unary, and an error (a trailers-only response carries the headers).
	client := healthpb.NewHealthClient(conn)
	if _, err := client.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("check: %v", err)
	}
	if _, err := client.Check(ctx, &healthpb.HealthCheckRequest{Service: "internal"}); status.Code(err) != grpccodes.Internal {
		t.Fatalf("check internal: %v", err)
	}
	waitN(ctx, t, "client", ends, 2)
	points := requestCounts(t, collect(t, reader))
	if len(points) != 2 {
		t.Fatalf("%d series, want 2", len(points))
	}
	for _, pt := range points {
		wantLabels(t, "client", pt.Attributes, map[string]string{"destination_workload": "payments-v2", "destination_version": "v2"})
	}
}
