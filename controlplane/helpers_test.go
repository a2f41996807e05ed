package controlplane

import (
	"context"
	"crypto/tls"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"mesh/internal/testutil"
)

func newTestServer(t *testing.T, opts ...Option) *Server {
	t.Helper()
	s, err := New(testutil.Context(t), opts...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
	})
	return s
}

// adsClient is a raw ADS client over real gRPC, standing in for a
// proxyless gRPC workload.
type adsClient struct {
	t        *testing.T
	stream   discovery.AggregatedDiscoveryService_StreamAggregatedResourcesClient
	node     *core.Node
	sentNode bool
	cancel   context.CancelFunc
	conn     *grpc.ClientConn
	resps    chan *discovery.DiscoveryResponse
	done     chan struct{}

	mu       sync.Mutex
	names    map[string][]string
	versions map[string]string
	nonces   map[string]string
}

type testNode struct {
	id        string
	namespace string
	service   string // host:port
	address   string
	labels    map[string]string
	sa        string
}

func dialADS(t *testing.T, s *Server, n testNode) *adsClient {
	t.Helper()
	meta := map[string]any{metaGenerator: "grpc"}
	if n.namespace != "" {
		meta[metaNamespace] = n.namespace
	}
	if n.service != "" {
		meta[metaService] = n.service
	}
	if n.address != "" {
		meta[metaAddress] = n.address
	}
	if n.sa != "" {
		meta[metaServiceAccount] = n.sa
	}
	labels := map[string]any{}
	for k, v := range n.labels {
		labels[k] = v
	}
	meta[metaLabels] = labels
	md, err := structpb.NewStruct(meta)
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(s.Addr(), xdsDialOptions(t, s, n.enrollment(), n.id)...)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		cancel()
		conn.Close()
		t.Fatal(err)
	}
	c := &adsClient{
		t: t, stream: stream, node: &core.Node{Id: n.id, Metadata: md}, cancel: cancel, conn: conn,
		resps: make(chan *discovery.DiscoveryResponse, 64), done: make(chan struct{}),
		names: map[string][]string{}, versions: map[string]string{}, nonces: map[string]string{},
	}
	go func() {
		defer close(c.done)
		for {
			r, err := stream.Recv()
			if err != nil {
				return
			}
			select {
			case c.resps <- r:
			case <-ctx.Done():
				return
			}
		}
	}()
	t.Cleanup(c.close)
	return c
}

// enrollment is the workload n stands for, so that its stream carries a
// credential proving exactly what n claims.
func (n testNode) enrollment() Workload {
	w := Workload{Name: "test-node", Namespace: n.namespace, ServiceAccount: n.sa, Labels: n.labels, Address: n.address}
	if n.service != "" {
		host, port, _ := net.SplitHostPort(n.service)
		p, _ := strconv.ParseUint(port, 10, 16)
		w.Service, _, _ = strings.Cut(host, ".")
		w.Port = uint32(p)
	}
	return w.withDefaults()
}

// xdsDialOptions dial s's xDS port as w enrolled with node id nodeID:
// TLS trusting s's CA and w's enrollment token as bearer token. A zero w
// sends no token.
func xdsDialOptions(t *testing.T, s *Server, w Workload, nodeID string) []grpc.DialOption {
	t.Helper()
	if s.plaintext {
		return []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}
	}
	opts := []grpc.DialOption{grpc.WithTransportCredentials(xdsTLS(t, s, nil))}
	if w.Name != "" {
		token, err := s.certService.mintEnrollment(w, nodeID)
		if err != nil {
			t.Fatal(err)
		}
		opts = append(opts, grpc.WithPerRPCCredentials(bearer(token)))
	}
	return opts
}

// xdsTLS is TLS to s's xDS port, with cert as client certificate if set.
func xdsTLS(t *testing.T, s *Server, cert *tls.Certificate) credentials.TransportCredentials {
	t.Helper()
	cfg := &tls.Config{RootCAs: testutil.RootPool(t, s.RootPEM()), MinVersion: tls.VersionTLS12}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	return credentials.NewTLS(cfg)
}

// bearer is a static bearer token as call credentials.
type bearer string

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + string(b)}, nil
}
func (b bearer) RequireTransportSecurity() bool { return true }

// close ends the stream and waits for the reader goroutine.
func (c *adsClient) close() {
	c.cancel()
	<-c.done
	c.conn.Close()
}

func (c *adsClient) send(typeURL string, names []string, errDetail string) {
	c.t.Helper()
	c.mu.Lock()
	c.names[typeURL] = names
	req := &discovery.DiscoveryRequest{
		TypeUrl: typeURL, ResourceNames: names,
		VersionInfo: c.versions[typeURL], ResponseNonce: c.nonces[typeURL],
	}
	if !c.sentNode {
		req.Node = c.node
		c.sentNode = true
	}
	c.mu.Unlock()
	if errDetail != "" {
		req.ErrorDetail = &statusProto{Message: errDetail}
		req.ErrorDetail.Code = 3
	}
	if err := c.stream.Send(req); err != nil {
		c.t.Fatalf("send %s: %v", typeURL, err)
	}
}

// subscribe asks for names of typeURL.
func (c *adsClient) subscribe(typeURL string, names ...string) { c.send(typeURL, names, "") }

// await returns the first response of typeURL that satisfies ok, ACKing
// every response on the way.
func (c *adsClient) await(ctx context.Context, typeURL string, ok func(*discovery.DiscoveryResponse) bool) *discovery.DiscoveryResponse {
	c.t.Helper()
	for {
		select {
		case <-ctx.Done():
			c.t.Fatalf("timed out waiting for %s response", typeURL)
			return nil
		case r := <-c.resps:
			validateResources(c.t, r)
			c.mu.Lock()
			c.versions[r.GetTypeUrl()] = r.GetVersionInfo()
			c.nonces[r.GetTypeUrl()] = r.GetNonce()
			names := c.names[r.GetTypeUrl()]
			c.mu.Unlock()
			c.send(r.GetTypeUrl(), names, "") // ACK
			if r.GetTypeUrl() == typeURL && ok(r) {
				return r
			}
		}
	}
}

func validateResources(t *testing.T, r *discovery.DiscoveryResponse) {
	t.Helper()
	for _, a := range r.GetResources() {
		m, err := a.UnmarshalNew()
		if err != nil {
			t.Fatalf("unmarshal %s: %v", a.GetTypeUrl(), err)
		}
		if v, ok := m.(interface{ ValidateAll() error }); ok {
			if err := v.ValidateAll(); err != nil {
				t.Errorf("resource %T fails Envoy validation: %v", m, err)
			}
		}
	}
}

func decode[T proto.Message](t *testing.T, r *discovery.DiscoveryResponse) map[string]T {
	t.Helper()
	out := map[string]T{}
	for _, a := range r.GetResources() {
		m, err := a.UnmarshalNew()
		if err != nil {
			t.Fatal(err)
		}
		v, ok := m.(T)
		if !ok {
			t.Fatalf("resource is %T", m)
		}
		switch x := m.(type) {
		case *listener.Listener:
			out[x.GetName()] = v
		case *route.RouteConfiguration:
			out[x.GetName()] = v
		case *cluster.Cluster:
			out[x.GetName()] = v
		case *endpointv3.ClusterLoadAssignment:
			out[x.GetClusterName()] = v
		}
	}
	return out
}

func has(name string) func(*discovery.DiscoveryResponse) bool {
	return func(r *discovery.DiscoveryResponse) bool {
		for _, a := range r.GetResources() {
			m, err := a.UnmarshalNew()
			if err != nil {
				continue
			}
			if n, ok := m.(interface{ GetName() string }); ok && n.GetName() == name {
				return true
			}
			if n, ok := m.(*endpointv3.ClusterLoadAssignment); ok && n.GetClusterName() == name {
				return true
			}
		}
		return false
	}
}

// endpointAddrs lists the "ip:port"s in a load assignment.
func endpointAddrs(cla *endpointv3.ClusterLoadAssignment) []string {
	var out []string
	for _, l := range cla.GetEndpoints() {
		for _, e := range l.GetLbEndpoints() {
			sa := e.GetEndpoint().GetAddress().GetSocketAddress()
			out = append(out, hostPort(sa.GetAddress(), sa.GetPortValue()))
		}
	}
	return out
}

var _ = resource.ListenerType

type statusProto = statuspb.Status

type endpointAssignment = endpointv3.ClusterLoadAssignment
type clusterResource = cluster.Cluster
