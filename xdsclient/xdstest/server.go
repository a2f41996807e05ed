package xdstest

import (
	"context"
	"crypto/tls"
	"errors"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	corepb "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	deltav3 "github.com/envoyproxy/go-control-plane/pkg/server/delta/v3"
	sotwv3 "github.com/envoyproxy/go-control-plane/pkg/server/sotw/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/proto"

	"mesh/xdsclient"
)

// Server is a real go-control-plane ADS server, state of the world and
// delta (incremental), backed by one SnapshotCache and listening on
// 127.0.0.1. It records every DiscoveryRequest and DeltaDiscoveryRequest
// it receives, so tests can check ACKs and NACKs.
type Server struct {
	cache      cachev3.SnapshotCache
	addr       string
	serverOpts []grpc.ServerOption

	mu       sync.Mutex
	grpc     *grpc.Server
	done     chan struct{} // closed when the current grpc.Server's Serve returns
	versions map[string]int
	requests []*discoverypb.DiscoveryRequest
	deltas   []*discoverypb.DeltaDiscoveryRequest
	changed  chan struct{} // closed and replaced on every new request
}

// NewServer starts a plaintext server on 127.0.0.1:0 and stops it in
// t.Cleanup.
func NewServer(t testing.TB) *Server {
	t.Helper()
	return NewTLSServer(t, nil)
}

// NewTLSServer is NewServer serving TLS with cfg (plaintext if cfg is nil).
// Its Bootstrap still says "insecure": point the channel creds at your CA.
func NewTLSServer(t testing.TB, cfg *tls.Config) *Server {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("xdstest: listen: %v", err)
	}
	s := &Server{
		// The cache's "ads" flag would make it answer only requests that
		// name every resource of the type in the snapshot (Envoy's
		// consistency rule), which a gRPC-style client that subscribes to
		// what it needs never does; the stream is ADS either way.
		cache:    cachev3.NewSnapshotCache(false, cachev3.IDHash{}, nil),
		addr:     lis.Addr().String(),
		versions: map[string]int{},
		changed:  make(chan struct{}),
	}
	if cfg != nil {
		s.serverOpts = []grpc.ServerOption{grpc.Creds(credentials.NewTLS(cfg))}
	}
	s.serve(lis)
	t.Cleanup(s.Stop)
	return s
}

func (s *Server) serve(lis net.Listener) {
	// pkg/server/v3 would pull in the rate limit module, which this module
	// does not require, so the ADS service is assembled from the sotw server.
	sotw := sotwv3.NewServer(context.Background(), nackDampingCache{s.cache}, recorder{s})
	delta := deltav3.NewServer(context.Background(), s.cache, recorder{s})
	gs := grpc.NewServer(s.serverOpts...)
	discoverypb.RegisterAggregatedDiscoveryServiceServer(gs, adsService{sotw: sotw, delta: delta})
	done := make(chan struct{})
	s.mu.Lock()
	s.grpc, s.done = gs, done
	s.mu.Unlock()
	go func() {
		defer close(done)
		_ = gs.Serve(lis)
	}()
}

// adsService serves state-of-the-world and delta ADS.
type adsService struct {
	discoverypb.UnimplementedAggregatedDiscoveryServiceServer
	sotw  sotwv3.Server
	delta deltav3.Server
}

func (a adsService) DeltaAggregatedResources(stream discoverypb.AggregatedDiscoveryService_DeltaAggregatedResourcesServer) error {
	return a.delta.DeltaStreamHandler(stream, resource.AnyType)
}

func (a adsService) StreamAggregatedResources(stream discoverypb.AggregatedDiscoveryService_StreamAggregatedResourcesServer) error {
	return a.sotw.StreamHandler(stream, resource.AnyType)
}

// recorder is the sotw and delta callbacks: it records requests.
type recorder struct{ s *Server }

func (recorder) OnDeltaStreamOpen(context.Context, int64, string) error { return nil }
func (recorder) OnDeltaStreamClosed(int64, *corepb.Node)                {}
func (recorder) OnStreamDeltaResponse(int64, *discoverypb.DeltaDiscoveryRequest, *discoverypb.DeltaDiscoveryResponse) {
}

func (r recorder) OnStreamDeltaRequest(_ int64, req *discoverypb.DeltaDiscoveryRequest) error {
	s := r.s
	s.mu.Lock()
	s.deltas = append(s.deltas, proto.Clone(req).(*discoverypb.DeltaDiscoveryRequest))
	close(s.changed)
	s.changed = make(chan struct{})
	s.mu.Unlock()
	return nil
}

func (recorder) OnStreamOpen(context.Context, int64, string) error { return nil }
func (recorder) OnStreamClosed(int64, *corepb.Node)                {}
func (recorder) OnStreamResponse(context.Context, int64, *discoverypb.DiscoveryRequest, *discoverypb.DiscoveryResponse) {
}

func (r recorder) OnStreamRequest(_ int64, req *discoverypb.DiscoveryRequest) error {
	s := r.s
	s.mu.Lock()
	s.requests = append(s.requests, proto.Clone(req).(*discoverypb.DiscoveryRequest))
	close(s.changed)
	s.changed = make(chan struct{})
	s.mu.Unlock()
	return nil
}

// Addr is the server's "127.0.0.1:port".
func (s *Server) Addr() string { return s.addr }

// Stop stops the gRPC server, breaking every stream, and waits for it.
// It is idempotent; Restart brings the server back on the same address.
func (s *Server) Stop() {
	s.mu.Lock()
	gs, done := s.grpc, s.done
	s.grpc = nil
	s.mu.Unlock()
	if gs == nil {
		return
	}
	gs.Stop()
	<-done
}

// Restart stops the server if it runs and starts a new gRPC server on the
// same address, serving the same snapshots.
func (s *Server) Restart(t testing.TB) {
	t.Helper()
	s.Stop()
	var lis net.Listener
	var err error
	// The port was just released; retry briefly in case the OS lags.
	for range 50 {
		if lis, err = net.Listen("tcp", s.addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("xdstest: relisten on %s: %v", s.addr, err)
	}
	s.serve(lis)
}

// Bootstrap returns a bootstrap pointing at s with insecure channel creds
// and no certificate providers (add them for TLS resources).
func (s *Server) Bootstrap(nodeID string) *xdsclient.Bootstrap {
	return &xdsclient.Bootstrap{
		Node: xdsclient.Node{ID: nodeID},
		Servers: []xdsclient.ServerConfig{{
			URI:          s.addr,
			ChannelCreds: []xdsclient.ChannelCreds{{Type: xdsclient.CredsInsecure}},
		}},
	}
}

// SetResources replaces nodeID's snapshot with the given resources under a
// new version ("1", "2", ...), and returns that version.
func (s *Server) SetResources(t testing.TB, nodeID string, listeners, routes, clusters, endpoints []types.Resource) string {
	t.Helper()
	s.mu.Lock()
	s.versions[nodeID]++
	version := strconv.Itoa(s.versions[nodeID])
	s.mu.Unlock()
	snap, err := cachev3.NewSnapshot(version, map[resource.Type][]types.Resource{
		resource.ListenerType: listeners,
		resource.RouteType:    routes,
		resource.ClusterType:  clusters,
		resource.EndpointType: endpoints,
	})
	if err != nil {
		t.Fatalf("xdstest: snapshot: %v", err)
	}
	if err := s.cache.SetSnapshot(context.Background(), nodeID, snap); err != nil {
		t.Fatalf("xdstest: set snapshot: %v", err)
	}
	return version
}

// Requests returns a copy of every DiscoveryRequest received so far.
func (s *Server) Requests() []*discoverypb.DiscoveryRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*discoverypb.DiscoveryRequest(nil), s.requests...)
}

// DeltaRequests returns a copy of every DeltaDiscoveryRequest received so far.
func (s *Server) DeltaRequests() []*discoverypb.DeltaDiscoveryRequest {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]*discoverypb.DeltaDiscoveryRequest(nil), s.deltas...)
}

// WaitForDeltaRequest returns the first received delta request (past or
// future) for which match returns true, or ctx's error.
func (s *Server) WaitForDeltaRequest(ctx context.Context, match func(*discoverypb.DeltaDiscoveryRequest) bool) (*discoverypb.DeltaDiscoveryRequest, error) {
	seen := 0
	for {
		s.mu.Lock()
		reqs := s.deltas[seen:]
		changed := s.changed
		seen = len(s.deltas)
		s.mu.Unlock()
		for _, r := range reqs {
			if match(r) {
				return r, nil
			}
		}
		select {
		case <-ctx.Done():
			return nil, errors.Join(errors.New("xdstest: no matching delta request"), ctx.Err())
		case <-changed:
		}
	}
}

// WaitForRequest returns the first received request (past or future) for
// which match returns true, or ctx's error.
func (s *Server) WaitForRequest(ctx context.Context, match func(*discoverypb.DiscoveryRequest) bool) (*discoverypb.DiscoveryRequest, error) {
	seen := 0
	for {
		s.mu.Lock()
		reqs := s.requests[seen:]
		changed := s.changed
		seen = len(s.requests)
		s.mu.Unlock()
		for _, r := range reqs {
			if match(r) {
				return r, nil
			}
		}
		select {
		case <-ctx.Done():
			return nil, errors.Join(errors.New("xdstest: no matching request"), ctx.Err())
		case <-changed:
		}
	}
}

// nackDampingCache stops go-control-plane from answering a NACK with the
// very same snapshot: the snapshot cache compares the request's version
// (a NACK carries the previous good one) with the snapshot's and would
// resend at once, forever. Like istiod, it waits for a new snapshot.
type nackDampingCache struct {
	cachev3.SnapshotCache
}

func (c nackDampingCache) CreateWatch(req *cachev3.Request, sub cachev3.Subscription, ch chan cachev3.Response) (func(), error) {
	if req.GetErrorDetail() != nil {
		if snap, err := c.GetSnapshot(req.GetNode().GetId()); err == nil {
			r := proto.Clone(req).(*discoverypb.DiscoveryRequest)
			r.VersionInfo = snap.GetVersion(req.GetTypeUrl())
			req = r
		}
	}
	return c.SnapshotCache.CreateWatch(req, sub, ch)
}
