package xdstest

import (
	"context"
	"fmt"
	"maps"
	"net"
	"slices"
	"strconv"
	"sync"
	"testing"

	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"

	"mesh/xdsclient"
)

// pushOrder is the order in which a full push sends the types, istiod's.
var pushOrder = []string{resource.ClusterType, resource.EndpointType, resource.ListenerType, resource.RouteType}

// StrictServer is an ADS server on 127.0.0.1, delta (incremental) and
// state of the world, that holds a client to istiod's request rules
// without istiod, and can serve entries verbatim, garbled ones included
// (SetExtra), which a snapshot cache cannot. On delta streams it treats
// requests as istiod's delta server does (pilot/pkg/xds/delta.go):
//
//   - a request with error_detail is a NACK: it is counted, and nothing
//     else in it is applied, subscription changes included;
//   - a request whose response_nonce is set but is not the last nonce sent
//     for its type is stale and dropped whole, subscription changes
//     included (istiod logs "Expired nonce received");
//   - a request with the current nonce is an ACK, one without a nonce a
//     subscription change; an ACK that changes the subscription, or a
//     nonce-less request that changes nothing, is a protocol violation
//     (istiod logs an error, and panics in its own tests);
//   - a subscription change is answered with the resources it subscribes
//     to (absent ones in removed_resources), and a CDS change is followed
//     by a push of every subscribed EDS resource, as istiod forces;
//   - Set and Push send every subscribed resource of every type with a
//     new nonce each, from the loop that handles requests, so pushes and
//     requests cross each other as they do against istiod.
//
// Like istiod, after each LDS or CDS response it takes the names of the
// resources in that response as the stream's whole subscription to the
// type (istiod treats both as wildcard types), so a client that answers a
// change with only the names it adds loses the others.
//
// On state-of-the-world streams a NACK or a stale nonce is likewise
// ignored, a request with new names is answered with every subscribed
// resource of its type, and an ACK is not answered.
type StrictServer struct {
	addr string
	gs   *grpc.Server
	done chan struct{}

	mu        sync.Mutex
	resources map[string]map[string]*anypb.Any // type URL -> name -> resource
	versions  map[string]map[string]string
	setCount  int
	extra     map[string][]*discoverypb.Resource // served verbatim after the resources
	streams   map[*deltaStream]bool
	last      *deltaStream
	stats     StrictStats
}

// StrictStats counts what a StrictServer received.
type StrictStats struct {
	Requests      int
	Responses     int
	NACKs         int
	ExpiredNonces int
	// NACKMessages are the error_detail messages, in order.
	NACKMessages []string
	// Violations describes each request that broke istiod's rules.
	Violations []string
}

type deltaStream struct {
	push chan struct{} // a full push is due; capacity 1, so pushes coalesce
	// Guarded by StrictServer.mu.
	subscribed map[string]map[string]bool
	nonceSent  map[string]string
	nonces     int
}

// NewStrictServer starts a StrictServer on 127.0.0.1:0 and stops it in
// t.Cleanup.
func NewStrictServer(t testing.TB) *StrictServer {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("xdstest: listen: %v", err)
	}
	s := &StrictServer{
		addr:      lis.Addr().String(),
		gs:        grpc.NewServer(),
		done:      make(chan struct{}),
		resources: map[string]map[string]*anypb.Any{},
		versions:  map[string]map[string]string{},
		extra:     map[string][]*discoverypb.Resource{},
		streams:   map[*deltaStream]bool{},
	}
	discoverypb.RegisterAggregatedDiscoveryServiceServer(s.gs, strictService{s: s})
	go func() {
		defer close(s.done)
		_ = s.gs.Serve(lis)
	}()
	t.Cleanup(s.Stop)
	return s
}

// Addr is the server's "127.0.0.1:port".
func (s *StrictServer) Addr() string { return s.addr }

// Stop stops the server, breaking every stream, and waits for it.
func (s *StrictServer) Stop() {
	s.gs.Stop()
	<-s.done
}

// Bootstrap returns a bootstrap pointing at s with insecure channel
// creds, and the "delta" server feature if delta is set.
func (s *StrictServer) Bootstrap(nodeID string, delta bool) *xdsclient.Bootstrap {
	bs := &xdsclient.Bootstrap{
		Node: xdsclient.Node{ID: nodeID},
		Servers: []xdsclient.ServerConfig{{
			URI:          s.addr,
			ChannelCreds: []xdsclient.ChannelCreds{{Type: xdsclient.CredsInsecure}},
		}},
	}
	if delta {
		bs.Servers[0].ServerFeatures = []string{xdsclient.ServerFeatureDelta}
	}
	return bs
}

// SetExtra has every later response of typeURL carry entries verbatim
// after its resources (on state-of-the-world streams, each entry's
// Resource). No entries stops it. It does not push: the next Set or Push
// sends them, so a test can change resources and entries at once.
func (s *StrictServer) SetExtra(typeURL string, entries ...*discoverypb.Resource) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.extra[typeURL] = entries
}

// Set replaces every resource, pushes to every stream and returns the
// new version (a state-of-the-world response's version_info). A resource
// whose bytes did not change keeps its own (delta) version.
func (s *StrictServer) Set(t testing.TB, listeners, routes, clusters, endpoints []types.Resource) string {
	t.Helper()
	next := map[string]map[string]*anypb.Any{}
	for _, group := range [][]types.Resource{listeners, routes, clusters, endpoints} {
		for _, r := range group {
			a, err := anypb.New(r)
			if err != nil {
				t.Fatalf("xdstest: %v", err)
			}
			if next[a.TypeUrl] == nil {
				next[a.TypeUrl] = map[string]*anypb.Any{}
			}
			next[a.TypeUrl][cachev3.GetResourceName(r)] = a
		}
	}
	s.mu.Lock()
	s.setCount++
	versions := map[string]map[string]string{}
	for typ, m := range next {
		versions[typ] = map[string]string{}
		for name, a := range m {
			versions[typ][name] = s.versions[typ][name]
			if old := s.resources[typ][name]; old == nil || !proto.Equal(old, a) {
				versions[typ][name] = strconv.Itoa(s.setCount)
			}
		}
	}
	s.resources, s.versions = next, versions
	version := strconv.Itoa(s.setCount)
	s.mu.Unlock()
	s.Push()
	return version
}

// Push has every stream send every subscribed resource again, each type
// with a new nonce, as istiod does on any config change.
func (s *StrictServer) Push() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for ds := range s.streams {
		select {
		case ds.push <- struct{}{}:
		default:
		}
	}
}

// Subscribed returns the names of typeURL that the newest stream is
// subscribed to, as the server sees it, sorted.
func (s *StrictServer) Subscribed(typeURL string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.last == nil {
		return nil
	}
	return slices.Sorted(maps.Keys(s.last.subscribed[typeURL]))
}

// Stats returns what the server counted so far.
func (s *StrictServer) Stats() StrictStats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.stats
	st.Violations = slices.Clone(st.Violations)
	st.NACKMessages = slices.Clone(st.NACKMessages)
	return st
}

type strictService struct {
	discoverypb.UnimplementedAggregatedDiscoveryServiceServer
	s *StrictServer
}

func (d strictService) DeltaAggregatedResources(stream discoverypb.AggregatedDiscoveryService_DeltaAggregatedResourcesServer) error {
	s := d.s
	return runStream(s, stream.Context(), stream.Recv,
		func(ds *deltaStream, req *discoverypb.DeltaDiscoveryRequest) error { return s.handle(stream, ds, req) },
		func(ds *deltaStream) error {
			for _, typ := range pushOrder {
				if err := s.sendSubscribed(stream, ds, typ); err != nil {
					return err
				}
			}
			return nil
		})
}

// runStream serves one stream: it registers it, reads its requests on a
// goroutine that ends with the stream, and from this one handles them
// and the pushes in turn, as istiod does.
func runStream[R any](s *StrictServer, ctx context.Context, recv func() (R, error), handle func(*deltaStream, R) error, push func(*deltaStream) error) error {
	ds := &deltaStream{push: make(chan struct{}, 1), subscribed: map[string]map[string]bool{}, nonceSent: map[string]string{}}
	s.mu.Lock()
	s.streams[ds] = true
	s.last = ds
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.streams, ds)
		s.mu.Unlock()
	}()
	reqs := make(chan R, 1)
	recvErr := make(chan error, 1)
	go func() {
		for {
			req, err := recv()
			if err != nil {
				recvErr <- err
				return
			}
			select {
			case reqs <- req:
			case <-ctx.Done():
				return
			}
		}
	}()
	for {
		var err error
		select {
		case req := <-reqs:
			err = handle(ds, req)
		case <-ds.push:
			err = push(ds)
		case err = <-recvErr:
		case <-ctx.Done():
			err = ctx.Err()
		}
		if err != nil {
			return err
		}
	}
}

func (s *StrictServer) handle(stream discoverypb.AggregatedDiscoveryService_DeltaAggregatedResourcesServer, ds *deltaStream, req *discoverypb.DeltaDiscoveryRequest) error {
	typ := req.GetTypeUrl()
	s.mu.Lock()
	s.stats.Requests++
	if req.GetErrorDetail() != nil {
		s.stats.NACKs++
		s.stats.NACKMessages = append(s.stats.NACKMessages, req.GetErrorDetail().GetMessage())
		if len(req.GetResourceNamesSubscribe())+len(req.GetResourceNamesUnsubscribe()) > 0 {
			s.violationLocked("%s NACK %q carries subscription changes, which are ignored", typ, req.GetResponseNonce())
		}
		s.mu.Unlock()
		return nil
	}
	subs := ds.subscribed[typ]
	if subs == nil {
		subs = map[string]bool{}
		ds.subscribed[typ] = subs
		for _, n := range req.GetResourceNamesSubscribe() {
			subs[n] = true
		}
		for n := range req.GetInitialResourceVersions() {
			subs[n] = true
		}
		for _, n := range req.GetResourceNamesUnsubscribe() {
			delete(subs, n)
		}
		s.mu.Unlock()
		return s.sendSubscribed(stream, ds, typ)
	}
	if nonce := req.GetResponseNonce(); nonce != "" && nonce != ds.nonceSent[typ] {
		s.stats.ExpiredNonces++
		s.mu.Unlock()
		return nil
	}
	changed := false
	var asked []string
	for _, n := range req.GetResourceNamesSubscribe() {
		if !subs[n] {
			subs[n], changed = true, true
		}
		asked = append(asked, n)
	}
	for n := range req.GetInitialResourceVersions() {
		if !subs[n] {
			subs[n], changed = true, true
		}
		asked = append(asked, n)
	}
	for _, n := range req.GetResourceNamesUnsubscribe() {
		if subs[n] {
			delete(subs, n)
			changed = true
		}
	}
	if spontaneous := req.GetResponseNonce() == ""; spontaneous != changed {
		s.violationLocked("%s request with nonce %q changes the subscription: %v", typ, req.GetResponseNonce(), changed)
	}
	s.mu.Unlock()
	if !changed {
		return nil
	}
	if err := s.send(stream, ds, typ, asked); err != nil {
		return err
	}
	if typ == resource.ClusterType {
		return s.sendSubscribed(stream, ds, resource.EndpointType)
	}
	return nil
}

func (s *StrictServer) violationLocked(format string, args ...any) {
	s.stats.Violations = append(s.stats.Violations, fmt.Sprintf(format, args...))
}

// sendSubscribed sends every subscribed resource of typ.
func (s *StrictServer) sendSubscribed(stream discoverypb.AggregatedDiscoveryService_DeltaAggregatedResourcesServer, ds *deltaStream, typ string) error {
	s.mu.Lock()
	names := slices.Collect(maps.Keys(ds.subscribed[typ]))
	s.mu.Unlock()
	return s.send(stream, ds, typ, names)
}

// send sends the named resources of typ, those it lacks as removed, with
// a new nonce; nothing if names is empty.
func (s *StrictServer) send(stream discoverypb.AggregatedDiscoveryService_DeltaAggregatedResourcesServer, ds *deltaStream, typ string, names []string) error {
	if len(names) == 0 {
		return nil
	}
	slices.Sort(names)
	names = slices.Compact(names)
	s.mu.Lock()
	resp := &discoverypb.DeltaDiscoveryResponse{TypeUrl: typ, SystemVersionInfo: strconv.Itoa(s.setCount)}
	for _, n := range names {
		if a := s.resources[typ][n]; a != nil {
			resp.Resources = append(resp.Resources, &discoverypb.Resource{Name: n, Version: s.versions[typ][n], Resource: a})
		} else {
			resp.RemovedResources = append(resp.RemovedResources, n)
		}
	}
	if typ == resource.ListenerType || typ == resource.ClusterType {
		record := map[string]bool{}
		for _, r := range resp.Resources {
			record[r.GetName()] = true
		}
		ds.subscribed[typ] = record
	}
	resp.Resources = append(resp.Resources, s.extra[typ]...)
	resp.Nonce = s.nextNonceLocked(ds, typ)
	s.mu.Unlock()
	return stream.Send(resp)
}

// nextNonceLocked returns the nonce of the next response of typ on ds and
// records it as the last one sent.
func (s *StrictServer) nextNonceLocked(ds *deltaStream, typ string) string {
	ds.nonces++
	s.stats.Responses++
	nonce := strconv.Itoa(ds.nonces)
	ds.nonceSent[typ] = nonce
	return nonce
}

func (d strictService) StreamAggregatedResources(stream discoverypb.AggregatedDiscoveryService_StreamAggregatedResourcesServer) error {
	s := d.s
	return runStream(s, stream.Context(), stream.Recv,
		func(ds *deltaStream, req *discoverypb.DiscoveryRequest) error {
			if !s.sotwRequest(ds, req) {
				return nil
			}
			return s.sendSotW(stream, ds, req.GetTypeUrl())
		},
		func(ds *deltaStream) error {
			for _, typ := range pushOrder {
				s.mu.Lock()
				subscribed := ds.subscribed[typ] != nil
				s.mu.Unlock()
				if !subscribed {
					continue
				}
				if err := s.sendSotW(stream, ds, typ); err != nil {
					return err
				}
			}
			return nil
		})
}

// sotwRequest applies a state-of-the-world request and reports whether
// it is to be answered.
func (s *StrictServer) sotwRequest(ds *deltaStream, req *discoverypb.DiscoveryRequest) bool {
	typ := req.GetTypeUrl()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stats.Requests++
	if req.GetErrorDetail() != nil {
		s.stats.NACKs++
		s.stats.NACKMessages = append(s.stats.NACKMessages, req.GetErrorDetail().GetMessage())
		return false
	}
	prev := ds.subscribed[typ]
	if prev != nil && req.GetResponseNonce() != ds.nonceSent[typ] {
		s.stats.ExpiredNonces++
		return false
	}
	names := map[string]bool{}
	for _, n := range req.GetResourceNames() {
		names[n] = true
	}
	ds.subscribed[typ] = names
	return prev == nil || !maps.Equal(prev, names)
}

// sendSotW sends every subscribed resource of typ and the extra entries.
func (s *StrictServer) sendSotW(stream discoverypb.AggregatedDiscoveryService_StreamAggregatedResourcesServer, ds *deltaStream, typ string) error {
	s.mu.Lock()
	resp := &discoverypb.DiscoveryResponse{TypeUrl: typ, VersionInfo: strconv.Itoa(s.setCount)}
	for _, n := range slices.Sorted(maps.Keys(ds.subscribed[typ])) {
		if a := s.resources[typ][n]; a != nil {
			resp.Resources = append(resp.Resources, a)
		}
	}
	for _, e := range s.extra[typ] {
		resp.Resources = append(resp.Resources, e.GetResource())
	}
	resp.Nonce = s.nextNonceLocked(ds, typ)
	s.mu.Unlock()
	return stream.Send(resp)
}
