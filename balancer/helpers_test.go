package balancer

import (
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/stats"

	"mesh/internal/handshake"
	"mesh/internal/leakcheck"
	"mesh/internal/testutil"
	"mesh/xdsclient"
)

const testTarget = "svc.test:80"

// backend is a real gRPC server on 127.0.0.1:0 that names itself in the
// "backend" response header.
type backend struct {
	name  string
	addr  string
	srv   *grpc.Server
	conns atomic.Int32 // open client connections
}

type backendService struct {
	testgrpc.UnimplementedTestServiceServer
	name string
}

func (s *backendService) EmptyCall(ctx context.Context, _ *testpb.Empty) (*testpb.Empty, error) {
	_ = grpc.SetHeader(ctx, metadata.Pairs("backend", s.name))
	return &testpb.Empty{}, nil
}

func (s *backendService) UnaryCall(ctx context.Context, _ *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	_ = grpc.SetHeader(ctx, metadata.Pairs("backend", s.name))
	return &testpb.SimpleResponse{}, nil
}

func (s *backendService) CacheableUnaryCall(ctx context.Context, _ *testpb.SimpleRequest) (*testpb.SimpleResponse, error) {
	_ = grpc.SetHeader(ctx, metadata.Pairs("backend", s.name))
	return &testpb.SimpleResponse{}, nil
}

type connCounter struct{ b *backend }

func (connCounter) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context   { return ctx }
func (connCounter) HandleRPC(context.Context, stats.RPCStats)                         {}
func (connCounter) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context { return ctx }
func (c connCounter) HandleConn(_ context.Context, s stats.ConnStats) {
	switch s.(type) {
	case *stats.ConnBegin:
		c.b.conns.Add(1)
	case *stats.ConnEnd:
		c.b.conns.Add(-1)
	}
}

func startBackend(t *testing.T, name string) *backend {
	t.Helper()
	return serveBackend(t, name, &backendService{name: name}, testutil.Listen(t))
}

// serveBackend serves svc as backend name on lis, counting its
// connections, until the test's cleanups.
func serveBackend(t *testing.T, name string, svc testgrpc.TestServiceServer, lis net.Listener) *backend {
	t.Helper()
	b := &backend{name: name, addr: lis.Addr().String()}
	b.srv = grpc.NewServer(grpc.StatsHandler(connCounter{b}))
	testgrpc.RegisterTestServiceServer(b.srv, svc)
	testutil.Serve(t, b.srv, lis)
	return b
}

// recordingCreds is insecure transport credentials that record the
// handshake.Info of each client handshake, to check what the LB policy puts
// on SubConn addresses.
type recordingCreds struct {
	credentials.TransportCredentials
	mu   sync.Mutex
	seen []handshake.Info
}

func newRecordingCreds() *recordingCreds {
	return &recordingCreds{TransportCredentials: insecure.NewCredentials()}
}

func (c *recordingCreds) ClientHandshake(ctx context.Context, authority string, conn net.Conn) (net.Conn, credentials.AuthInfo, error) {
	if info := handshake.FromContext(ctx); info != nil {
		c.mu.Lock()
		c.seen = append(c.seen, *info)
		c.mu.Unlock()
	}
	return c.TransportCredentials.ClientHandshake(ctx, authority, conn)
}

func (c *recordingCreds) Clone() credentials.TransportCredentials { return c }

func (c *recordingCreds) handshakes() []handshake.Info {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]handshake.Info(nil), c.seen...)
}

// testEnv is one channel through the mesh resolver and LB policy, fed by a
// fakeXDS.
type testEnv struct {
	xds     *fakeXDS
	builder *ResolverBuilder
	creds   *recordingCreds
	conn    *grpc.ClientConn
	client  testgrpc.TestServiceClient
}

func newTestEnv(t *testing.T, opts ...Option) *testEnv {
	t.Helper()
	checkNoLeaks(t)
	xds := newFakeXDS()
	t.Cleanup(xds.Close)
	e := newTestEnvWith(t, xds, opts...)
	e.xds = xds
	return e
}

// newTestEnvWith is newTestEnv over any XDSClient.
func newTestEnvWith(t *testing.T, client XDSClient, opts ...Option) *testEnv {
	t.Helper()
	e := &testEnv{creds: newRecordingCreds()}
	// DialOptions adds the timeout and retry interceptors, which pass RPCs
	// of routes without a policy straight through.
	e.builder = NewResolverBuilder(client, opts...)
	dialOpts := append(e.builder.DialOptions(), grpc.WithTransportCredentials(e.creds))
	conn, err := grpc.NewClient("mesh:///"+testTarget, dialOpts...)
	if err != nil {
		t.Fatalf("grpc.NewClient: %v", err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	e.conn = conn
	e.client = testgrpc.NewTestServiceClient(conn)
	return e
}

// call sends one EmptyCall and returns the name of the backend that served it.
func (e *testEnv) call(ctx context.Context) (string, error) {
	var hdr metadata.MD
	if _, err := e.client.EmptyCall(ctx, &testpb.Empty{}, grpc.Header(&hdr)); err != nil {
		return "", err
	}
	if v := hdr.Get("backend"); len(v) == 1 {
		return v[0], nil
	}
	return "", fmt.Errorf("response without backend header: %v", hdr)
}

// serve publishes cluster name (EDS service name+"-eds") with the backends'
// addresses as its endpoints.
func (e *testEnv) serve(cluster string, backends ...*backend) {
	e.xds.clusters.set(cluster, testCluster(cluster))
	var addrs []string
	for _, b := range backends {
		addrs = append(addrs, b.addr)
	}
	e.xds.endpoints.set(cluster+"-eds", testEndpoints(cluster+"-eds", addrs...))
}

// route points the listener of testTarget at route config "rc" splitting
// traffic over legs.
func (e *testEnv) route(legs ...xdsclient.ClusterWeight) {
	e.xds.listeners.set(testTarget, testListener(testTarget, "rc"))
	e.xds.routes.set("rc", weightedRouteConfig("rc", legs...))
}

func testListener(name, rds string) *xdsclient.Listener {
	return &xdsclient.Listener{Name: name, HTTP: &xdsclient.HTTPConnectionManager{RouteConfigName: rds}}
}

func weightedRouteConfig(name string, legs ...xdsclient.ClusterWeight) *xdsclient.RouteConfig {
	action := xdsclient.RouteAction{WeightedClusters: legs}
	if len(legs) == 1 {
		action = xdsclient.RouteAction{Cluster: legs[0].Name}
	}
	return &xdsclient.RouteConfig{Name: name, VirtualHosts: []xdsclient.VirtualHost{{
		Name:    "vh",
		Domains: []string{"svc.test", testTarget},
		Routes:  []xdsclient.Route{{Name: "default", Match: xdsclient.RouteMatch{Prefix: ""}, Action: action}},
	}}}
}

func testCluster(name string) *xdsclient.Cluster {
	return &xdsclient.Cluster{Name: name, Type: xdsclient.ClusterEDS, EDSServiceName: name + "-eds", LBPolicy: xdsclient.LBRoundRobin}
}

func testEndpoints(name string, addrs ...string) *xdsclient.Endpoints {
	loc := xdsclient.LocalityEndpoints{Locality: xdsclient.Locality{Zone: "z"}, Weight: 1}
	for _, a := range addrs {
		loc.Endpoints = append(loc.Endpoints, xdsclient.Endpoint{Address: a, Health: xdsclient.HealthHealthy, Weight: 1})
	}
	return &xdsclient.Endpoints{Name: name, Localities: []xdsclient.LocalityEndpoints{loc}}
}

func w(name string, weight uint32) xdsclient.ClusterWeight {
	return xdsclient.ClusterWeight{Name: name, Weight: weight}
}

// checkNoLeaks fails the test if goroutines of gRPC or of this package
// outlive it (after every other cleanup has run).
func checkNoLeaks(t *testing.T) {
	leakcheck.Check(t, "google.golang.org/grpc", "mesh/balancer.(*", "net/http.(*persistConn)")
}

// gatedListener holds back Accept until open is closed: a client's TCP
// connect succeeds but its gRPC handshake waits, so its SubConn stays
// CONNECTING for as long as the test wants.
type gatedListener struct {
	net.Listener
	open chan struct{}
	once sync.Once
}

func (l *gatedListener) Accept() (net.Conn, error) {
	<-l.open
	return l.Listener.Accept()
}

func (l *gatedListener) release() { l.once.Do(func() { close(l.open) }) }

func (l *gatedListener) Close() error {
	l.release()
	return l.Listener.Close()
}

// startGatedBackend is startBackend behind a gatedListener.
func startGatedBackend(t *testing.T, name string) (*backend, *gatedListener) {
	t.Helper()
	lis := &gatedListener{Listener: testutil.Listen(t), open: make(chan struct{})}
	return serveBackend(t, name, &backendService{name: name}, lis), lis
}

// routeFor returns the route a call to method on cc takes, with its router
// and headers, read from the table cc's LB policy published; a nil route
// before there is one.
func (b *ResolverBuilder) routeFor(ctx context.Context, cc *grpc.ClientConn, method string) (*Router, *xdsclient.Route, Headers) {
	authority, ok := strings.CutPrefix(cc.Target(), Scheme+":///")
	if !ok {
		return nil, nil, nil
	}
	for _, rb := range b.channels.list() {
		rb.pub.mu.Lock()
		name := rb.channelName
		rb.pub.mu.Unlock()
		t := rb.picker.table.Load()
		if name != authority || t.err != nil || t.router == nil {
			continue
		}
		md, _ := metadata.FromOutgoingContext(ctx)
		headers := MetadataHeaders(md)
		if _, route, err := t.router.pick(method, headers); err == nil {
			return t.router, route, headers
		}
	}
	return nil, nil, nil
}
