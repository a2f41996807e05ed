package controlplane

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/log"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/envoyproxy/go-control-plane/pkg/server/config"
	deltaserver "github.com/envoyproxy/go-control-plane/pkg/server/delta/v3"
	sotwserver "github.com/envoyproxy/go-control-plane/pkg/server/sotw/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
	securitypb "istio.io/api/security/v1alpha1"
)

// Server is an embedded, istiod-like xDS control plane for proxyless gRPC
// workloads, with a CA that issues SPIFFE SVIDs. Create one with New and
// stop it with Close.
type Server struct {
	logger      *slog.Logger
	trustDomain spiffeid.TrustDomain
	clusterID   string // CLUSTER_ID of bootstraps; see WithClusterID
	ca          *authority
	certService *caService // IstioCertificateService; see caservice.go
	hook        func(nodeID string, resources map[string][]types.Resource)
	listener    net.Listener
	grpcServer  *grpc.Server
	cache       cache.SnapshotCache
	cancel      context.CancelFunc
	wg          sync.WaitGroup

	mu       sync.Mutex
	closed   bool
	cfg      configSet
	declared map[string]Workload // by namespace/name
	streams  map[streamKey]*nodeInfo
	// departed holds serving workloads whose last stream closed, by node
	// id, until their grace period ends; their endpoints stay meanwhile.
	departed      map[string]*departure
	endpointGrace time.Duration
	gen           *generation
	pushes        uint64 // counts full pushes; the file watcher retries on change

	ops operations // admin servers and metrics endpoints; see graph.go
	sds sdsState   // minted SDS secrets; see sds.go

	// plaintext is WithPlaintextXDS: no TLS and no proof of identity.
	plaintext bool
	// proofs are what each open stream's credentials proved, from its
	// opening until it closes; see auth.go.
	proofs map[streamKey]*proof
	// refusals remembers refused streams already logged.
	refusals map[string]bool
	// baseConfig is the in-code configuration (WithConfig); a config
	// file's content is applied on top of it, never instead of it.
	baseConfig        []*object
	pathNormalization PathNormalization // see WithPathNormalization
}

// streamKey tells SotW and delta streams apart: their ids are counted
// separately by go-control-plane.
type streamKey struct {
	delta bool
	id    int64
}

// nodeInfo is what one ADS stream told us about its node.
type nodeInfo struct {
	id             string
	namespace      string
	serviceAccount string
	workloadName   string
	labels         map[string]string
	serviceHost    string
	servicePort    uint32
	address        string
	listeners      map[string]bool // listener names currently subscribed
	lastNonce      map[string]string
	lastVersion    map[string]string
	wantsSecrets   bool      // asked for SDS secrets; see sds.go
	proof          *proof    // what its credentials proved; nil in plaintext mode
	sync           syncState // what it ACKed and NACKed; see proxystatus.go
}

// addresses are the "ip:port"s the node serves its service on.
func (n *nodeInfo) addresses() []string {
	if n.address != "" {
		return []string{n.address}
	}
	var out []string
	for _, name := range sortedKeys(n.listeners) {
		if addr, ok := strings.CutPrefix(name, InboundListenerPrefix); ok {
			if _, _, err := parseHostPort(addr); err == nil {
				out = append(out, addr)
			}
		}
	}
	return out
}

// New starts a control plane serving ADS (state of the world and delta)
// on 127.0.0.1:0 unless WithAddress says otherwise. ctx bounds startup only.
//
// It serves xDS over TLS with its CA's certificate, and every stream must
// prove its workload (see WriteBootstrap); WithPlaintextXDS turns both off.
// Configuration given by options (WithConfig, WithConfigFile) is loaded
// before the first xDS request is answered; if it does not load, New
// returns the error and serves nothing, so no workload ever receives a
// configuration weaker than the one the operator wrote.
func New(ctx context.Context, opts ...Option) (*Server, error) {
	st := defaultSettings()
	for _, o := range opts {
		if o != nil {
			o.apply(&st)
		}
	}
	td, err := spiffeid.TrustDomainFromString(st.trustDomain)
	if err != nil {
		return nil, fmt.Errorf("trust domain %q: %w", st.trustDomain, err)
	}
	if st.configFile != "" && st.fileCheckInterval <= 0 {
		return nil, fmt.Errorf("file check interval %v: must be positive", st.fileCheckInterval)
	}
	if err := validatePathNormalization(st.pathNormalization); err != nil {
		return nil, err
	}
	if err := validateSDSRotation(st.sdsRotation); err != nil {
		return nil, err
	}
	if st.clusterID == "" {
		return nil, errors.New("WithClusterID: empty cluster ID")
	}
	if err := validateClusterID(st.clusterID); err != nil {
		return nil, fmt.Errorf("WithClusterID: %w", err)
	}
	caCert, caKey := st.caCertPEM, st.caKeyPEM
	var saved *state
	if st.stateDir != "" {
		if len(caCert) > 0 || len(caKey) > 0 {
			return nil, errors.New("WithStateDir and WithCA: give one; the state directory holds its own CA")
		}
		if saved, err = loadState(st.stateDir); err != nil {
			return nil, err
		}
		caCert, caKey = saved.caCertPEM, saved.caKeyPEM
	}
	ca, err := newAuthority(td, caCert, caKey, st.certTTL)
	if err != nil {
		return nil, err
	}
	if saved != nil && saved.caCertPEM == nil {
		if err := saveCA(st.stateDir, ca); err != nil {
			return nil, err
		}
	}
	if saved != nil {
		for _, u := range ca.cert.URIs {
			if u.Scheme == "spiffe" && u.Host != td.Name() {
				return nil, fmt.Errorf("state dir %s: its CA is for trust domain %q, not %q", st.stateDir, u.Host, td.Name())
			}
		}
	}
	s := &Server{
		logger:        st.logger,
		trustDomain:   td,
		clusterID:     st.clusterID,
		ca:            ca,
		hook:          st.snapshotHook,
		cfg:           configSet{},
		declared:      map[string]Workload{},
		streams:       map[streamKey]*nodeInfo{},
		departed:      map[string]*departure{},
		endpointGrace: st.endpointGrace,
		sds:           sdsState{enabled: st.sds},
		plaintext:     st.plaintextXDS,
		proofs:        map[streamKey]*proof{},
		refusals:      map[string]bool{},

		pathNormalization: st.pathNormalization,
	}
	for i, w := range st.workloads {
		if err := w.Validate(); err != nil {
			return nil, fmt.Errorf("WithWorkloads[%d]: %w", i, err)
		}
		w = w.withDefaults()
		s.declared[w.Namespace+"/"+w.Name] = w
	}
	for i, y := range st.inCodeConfig {
		objs, err := parseYAML(y)
		if err != nil {
			return nil, fmt.Errorf("WithConfig[%d]: %w", i, err)
		}
		s.baseConfig = append(s.baseConfig, objs...)
	}
	initial := s.baseConfig
	var initialHash string
	if st.configFile != "" {
		data, err := os.ReadFile(st.configFile)
		if err != nil {
			return nil, fmt.Errorf("config file: %w", err)
		}
		initialHash = hashBytes(data)
		objs, err := parseYAML(data)
		if err != nil {
			return nil, fmt.Errorf("config file %s: %w", st.configFile, err)
		}
		initial = append(slices.Clip(s.baseConfig), objs...)
	}
	lis, err := (&net.ListenConfig{}).Listen(ctx, "tcp", st.address)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", st.address, err)
	}
	s.listener = lis

	serveCtx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	logAdapter := slogAdapter{s.logger}
	s.cache = cache.NewSnapshotCache(false, cache.IDHash{}, logAdapter)
	withLogger := config.XDSOption(func(o *config.Opts) { o.Logger = logAdapter })
	cb := s.callbacks()
	ads := &adsServer{
		sotw:  sotwserver.NewServer(serveCtx, s.cache, cb, withLogger),
		delta: deltaserver.NewServer(serveCtx, s.cache, cb, withLogger),
	}
	var tokenKey []byte
	if saved != nil {
		tokenKey = saved.tokenKey
	}
	s.newCAService(lis.Addr(), tokenKey)
	serverOpts := []grpc.ServerOption{grpc.WaitForHandlers(true)}
	if !s.plaintext {
		serverOpts = append(serverOpts, grpc.Creds(credentials.NewTLS(s.xdsServerTLS())))
	}
	s.grpcServer = grpc.NewServer(serverOpts...)
	discovery.RegisterAggregatedDiscoveryServiceServer(s.grpcServer, ads)
	securitypb.RegisterIstioCertificateServiceServer(s.grpcServer, s.certService)

	// Every configured source loads before the server answers anything:
	// an empty or partial configuration is weaker than the one intended.
	s.mu.Lock()
	initialPushes := s.pushes
	if err := s.replaceLocked(initial); err != nil {
		s.mu.Unlock()
		cancel()
		lis.Close()
		if st.configFile != "" {
			return nil, fmt.Errorf("config file %s: %w", st.configFile, err)
		}
		return nil, fmt.Errorf("WithConfig: %w", err)
	}
	s.mu.Unlock()

	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := s.grpcServer.Serve(lis); err != nil {
			s.logger.Error("xds server stopped", "error", err)
		}
	}()
	if st.sdsRotation > 0 {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.rotateSecrets(serveCtx, st.sdsRotation)
		}()
	}
	if st.configFile != "" {
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.watchFile(serveCtx, st.configFile, st.fileCheckInterval, initialHash, initialPushes, true)
		}()
	}
	if s.plaintext {
		s.logger.Warn("INSECURE: xDS served in plaintext and node metadata trusted without proof; "+
			"any process that reaches this address may claim any workload, its secrets and its endpoints",
			"address", s.Addr())
	}
	s.logger.Info("control plane listening", "address", s.Addr(), "trust_domain", td.Name(), "tls", !s.plaintext)
	return s, nil
}

// Addr is the "ip:port" the xDS server listens on.
func (s *Server) Addr() string { return s.listener.Addr().String() }

// Close stops the server and its goroutines and waits for them.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	for _, d := range s.departed {
		d.timer.Stop()
	}
	s.mu.Unlock()
	s.cancel()
	s.grpcServer.Stop()
	s.certService.stop()
	s.ops.close()
	s.wg.Wait()
	return nil
}

// RootPEM is the CA certificate workloads must trust.
func (s *Server) RootPEM() []byte { return append([]byte(nil), s.ca.certPEM...) }

// IssueSVID mints a leaf certificate for spiffe://<td>/ns/<ns>/sa/<sa>,
// valid for TLS client and server use.
func (s *Server) IssueSVID(namespace, serviceAccount string) (chainPEM, keyPEM []byte, err error) {
	return s.ca.issue(namespace, serviceAccount)
}

// Apply upserts the objects in yaml (by kind, namespace and name) and
// pushes. On error nothing changes.
func (s *Server) Apply(yaml []byte) error {
	objs, err := parseYAML(yaml)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	cand := s.cfg.clone()
	changed := map[objectKey]bool{}
	for _, o := range objs {
		cand[o.key] = o
		changed[o.key] = true
	}
	return s.commitLocked(cand, changed)
}

// Replace makes the objects in yaml the whole configuration and pushes. On
// error nothing changes.
func (s *Server) Replace(yaml []byte) error { return s.replaceOver(nil, yaml) }

// replaceOver makes base plus the objects in yaml the whole configuration.
func (s *Server) replaceOver(base []*object, yaml []byte) error {
	objs, err := parseYAML(yaml)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	return s.replaceLocked(append(slices.Clip(base), objs...))
}

func (s *Server) replaceLocked(objs []*object) error {
	cand := configSet{}
	changed := map[objectKey]bool{}
	for _, o := range objs {
		cand[o.key] = o
		changed[o.key] = true
	}
	return s.commitLocked(cand, changed)
}

// Delete removes one object (namespace "" means "default") and pushes.
func (s *Server) Delete(kind, namespace, name string) error {
	if namespace == "" {
		namespace = "default"
	}
	key := objectKey{kind: kind, namespace: namespace, name: name}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	if _, ok := s.cfg[key]; !ok {
		return fmt.Errorf("%s: %w", key, ErrNotFound)
	}
	cand := s.cfg.clone()
	delete(cand, key)
	return s.commitLocked(cand, nil)
}

func (s *Server) commitLocked(cand configSet, changed map[objectKey]bool) error {
	reg := buildRegistry(s.trustDomain.Name(), s.declared, s.nodeList(), cand)
	if err := validateConfig(cand, changed, reg); err != nil {
		return err
	}
	s.cfg = cand
	s.pushAllLocked()
	s.warnFindingsLocked()
	return nil
}

// declare records a workload announced through a bootstrap.
func (s *Server) declare(w Workload) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	key := w.Namespace + "/" + w.Name
	if old, ok := s.declared[key]; ok && workloadsEqual(old, w) {
		return nil
	}
	s.declared[key] = w
	s.pushAllLocked()
	return nil
}

func workloadsEqual(a, b Workload) bool {
	return a.Name == b.Name && a.Namespace == b.Namespace && a.ServiceAccount == b.ServiceAccount &&
		a.Service == b.Service && a.Port == b.Port && a.Address == b.Address && maps.Equal(a.Labels, b.Labels)
}

// nodeList returns the connected streams' node infos in a stable order.
func (s *Server) nodeList() []*nodeInfo {
	keys := make([]streamKey, 0, len(s.streams))
	for k := range s.streams {
		keys = append(keys, k)
	}
	sortStreamKeys(keys)
	out := make([]*nodeInfo, 0, len(keys))
	for _, k := range keys {
		out = append(out, s.streams[k])
	}
	return out
}

func sortStreamKeys(keys []streamKey) {
	for i := 1; i < len(keys); i++ {
		for j := i; j > 0 && streamKeyLess(keys[j], keys[j-1]); j-- {
			keys[j], keys[j-1] = keys[j-1], keys[j]
		}
	}
}

func streamKeyLess(a, b streamKey) bool {
	if a.delta != b.delta {
		return !a.delta
	}
	return a.id < b.id
}

// pushAllLocked regenerates everything and sets every node's snapshot.
func (s *Server) pushAllLocked() {
	if s.closed {
		return
	}
	nodes := s.nodeList()
	reg := buildRegistry(s.trustDomain.Name(), s.declared, append(nodes, s.departedNodes()...), s.cfg)
	s.gen = buildGeneration(&generation{trustDomain: s.trustDomain.Name(), cfg: s.cfg, reg: reg, sds: s.sds.enabled, pathNormalization: s.pathNormalization})
	s.pushes++
	seen := map[string]bool{}
	for _, n := range nodes {
		if !seen[n.id] {
			seen[n.id] = true
			s.pushNodeLocked(n.id)
		}
	}
}

// pushNodeLocked sets one node's snapshot from the current generation. All
// streams of a node share one snapshot, so it covers the union of their
// subscriptions.
func (s *Server) pushNodeLocked(nodeID string) {
	if s.closed || s.gen == nil {
		return
	}
	var primary *nodeInfo
	requested := map[string]bool{}
	for _, n := range s.nodeList() {
		if n.id != nodeID {
			continue
		}
		if primary == nil {
			primary = n
		}
		for name := range n.listeners {
			requested[name] = true
		}
	}
	if primary == nil {
		return
	}
	res := s.gen.nodeResources(primary, sortedKeys(requested))
	s.addSecretsLocked(primary, res)
	snap := newSnapshot(res)
	if err := checkConsistent(snap); err != nil {
		// A bug in generation: keep the node on its last good snapshot.
		s.logger.Error("inconsistent snapshot not sent", "node", nodeID, "error", err)
		return
	}
	if s.hook != nil {
		s.hook(nodeID, res)
		snap = newSnapshot(res)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.cache.SetSnapshot(ctx, nodeID, snap); err != nil {
		s.logger.Error("set snapshot", "node", nodeID, "error", err)
	}
}

// newSnapshot versions each type by a hash of its content, so a type is
// pushed again exactly when it changes.
func newSnapshot(res map[string][]types.Resource) *cache.Snapshot {
	snap := &cache.Snapshot{}
	for _, typeURL := range sortedKeys(res) {
		idx := cache.GetResponseType(typeURL)
		if idx == types.UnknownType {
			continue
		}
		snap.Resources[idx] = cache.NewResources(contentVersion(res[typeURL]), res[typeURL])
	}
	return snap
}

func contentVersion(items []types.Resource) string {
	h := sha256.New()
	opts := proto.MarshalOptions{Deterministic: true}
	for _, r := range items {
		if r == nil {
			continue
		}
		b, err := opts.Marshal(r)
		if err != nil {
			h.Write([]byte(err.Error()))
		}
		h.Write([]byte(strconv.Itoa(len(b))))
		h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil)[:8])
}

// adsServer serves ADS only. go-control-plane's pkg/server/v3 bundles every
// xDS service, including rate-limit config whose module this build does not
// carry; ADS is all proxyless gRPC uses.
type adsServer struct {
	sotw  sotwserver.Server
	delta deltaserver.Server
}

func (a *adsServer) StreamAggregatedResources(stream discovery.AggregatedDiscoveryService_StreamAggregatedResourcesServer) error {
	return a.sotw.StreamHandler(stream, resource.AnyType)
}

func (a *adsServer) DeltaAggregatedResources(stream discovery.AggregatedDiscoveryService_DeltaAggregatedResourcesServer) error {
	return a.delta.DeltaStreamHandler(stream, resource.AnyType)
}

// callbackFuncs implements both go-control-plane callback interfaces.
type callbackFuncs struct {
	StreamOpenFunc         func(context.Context, streamKey) error
	StreamRequestFunc      func(int64, *discovery.DiscoveryRequest) error
	StreamResponseFunc     func(context.Context, int64, *discovery.DiscoveryRequest, *discovery.DiscoveryResponse)
	StreamClosedFunc       func(int64, *core.Node)
	StreamDeltaRequestFunc func(int64, *discovery.DeltaDiscoveryRequest) error
	DeltaStreamClosedFunc  func(int64, *core.Node)
}

func (c callbackFuncs) OnStreamOpen(ctx context.Context, id int64, _ string) error {
	return c.StreamOpenFunc(ctx, streamKey{id: id})
}
func (c callbackFuncs) OnStreamClosed(id int64, n *core.Node) { c.StreamClosedFunc(id, n) }
func (c callbackFuncs) OnStreamRequest(id int64, r *discovery.DiscoveryRequest) error {
	return c.StreamRequestFunc(id, r)
}
func (c callbackFuncs) OnStreamResponse(ctx context.Context, id int64, req *discovery.DiscoveryRequest, resp *discovery.DiscoveryResponse) {
	c.StreamResponseFunc(ctx, id, req, resp)
}
func (c callbackFuncs) OnDeltaStreamOpen(ctx context.Context, id int64, _ string) error {
	return c.StreamOpenFunc(ctx, streamKey{delta: true, id: id})
}
func (c callbackFuncs) OnDeltaStreamClosed(id int64, n *core.Node) { c.DeltaStreamClosedFunc(id, n) }
func (c callbackFuncs) OnStreamDeltaRequest(id int64, r *discovery.DeltaDiscoveryRequest) error {
	return c.StreamDeltaRequestFunc(id, r)
}
func (c callbackFuncs) OnStreamDeltaResponse(int64, *discovery.DeltaDiscoveryRequest, *discovery.DeltaDiscoveryResponse) {
}

func (s *Server) callbacks() callbackFuncs {
	return callbackFuncs{
		StreamOpenFunc: s.onOpen,
		StreamRequestFunc: func(id int64, req *discovery.DiscoveryRequest) error {
			return s.onRequest(streamKey{id: id}, req.GetNode(), req.GetTypeUrl(), req, nil)
		},
		StreamResponseFunc: func(_ context.Context, id int64, req *discovery.DiscoveryRequest, resp *discovery.DiscoveryResponse) {
			s.mu.Lock()
			defer s.mu.Unlock()
			if n := s.streams[streamKey{id: id}]; n != nil {
				n.lastNonce[req.GetTypeUrl()] = resp.GetNonce()
				n.lastVersion[req.GetTypeUrl()] = resp.GetVersionInfo()
			}
		},
		StreamClosedFunc: func(id int64, _ *core.Node) { s.onClosed(streamKey{id: id}) },
		StreamDeltaRequestFunc: func(id int64, req *discovery.DeltaDiscoveryRequest) error {
			return s.onRequest(streamKey{delta: true, id: id}, req.GetNode(), req.GetTypeUrl(), nil, req)
		},
		DeltaStreamClosedFunc: func(id int64, _ *core.Node) { s.onClosed(streamKey{delta: true, id: id}) },
	}
}

// onOpen authenticates a stream before it may ask for anything.
func (s *Server) onOpen(ctx context.Context, key streamKey) error {
	if s.plaintext {
		return nil
	}
	p, err := s.streamProof(ctx)
	s.mu.Lock()
	defer s.mu.Unlock()
	if err != nil {
		addr := "unknown"
		if pr, ok := peer.FromContext(ctx); ok {
			addr = pr.Addr.String()
		}
		s.logRefusalLocked("", "", err, "peer", addr)
		return status.Errorf(codes.Unauthenticated, "xds stream: %v", err)
	}
	s.proofs[key] = p
	return nil
}

// onRequest tracks the node and its listener subscriptions, and updates
// snapshots before go-control-plane's cache answers the request, so that a
// just-requested inbound or short-name listener is already there.
func (s *Server) onRequest(key streamKey, node *core.Node, typeURL string, sotw *discovery.DiscoveryRequest, delta *discovery.DeltaDiscoveryRequest) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return status.Error(codes.Unavailable, "control plane closed")
	}
	n := s.streams[key]
	isNew := n == nil
	if isNew {
		if node.GetId() == "" {
			return status.Error(codes.InvalidArgument, "first request on a stream must carry node.id")
		}
		n = s.parseNode(node)
		if !s.plaintext {
			p := s.proofs[key]
			if p == nil {
				return status.Error(codes.Unauthenticated, "xds stream: not authenticated")
			}
			if err := s.checkClaimsLocked(p, n); err != nil {
				s.logRefusalLocked(n.id, p.spiffeID(s.trustDomain), err)
				return err
			}
			n.proof = p
		}
		s.streams[key] = n
		if d := s.departed[n.id]; d != nil {
			d.timer.Stop() // back within its grace period: nothing changed
			delete(s.departed, n.id)
		}
		attrs := []any{"node", n.id, "service", n.serviceHost, "delta", key.delta}
		if n.proof != nil {
			attrs = append(attrs, "identity", n.proof.spiffeID(s.trustDomain), "proven_by", n.proof.via)
		}
		s.logger.Info("node connected", attrs...)
	}
	n.sync.record(typeURL, sotw, delta)
	if sotw != nil && sotw.GetErrorDetail() != nil {
		s.logger.Warn("node rejected config (NACK)", "node", n.id, "type", typeURL,
			"version", sotw.GetVersionInfo(), "error", sotw.GetErrorDetail().GetMessage())
		// Hold the rejected version instead of resending it in a loop: tell
		// the cache the node has it, so only a new version is sent.
		if sotw.GetResponseNonce() != "" && sotw.GetResponseNonce() == n.lastNonce[typeURL] {
			sotw.VersionInfo = n.lastVersion[typeURL]
		}
	}
	if delta != nil && delta.GetErrorDetail() != nil {
		s.logger.Warn("node rejected config (NACK)", "node", n.id, "type", typeURL,
			"error", delta.GetErrorDetail().GetMessage())
	}
	listenersChanged := false
	if typeURL == resource.ListenerType {
		next := map[string]bool{}
		if sotw != nil {
			for _, name := range sotw.GetResourceNames() {
				next[name] = true
			}
		} else {
			maps.Copy(next, n.listeners)
			for _, name := range delta.GetResourceNamesSubscribe() {
				next[name] = true
			}
			for _, name := range delta.GetResourceNamesUnsubscribe() {
				delete(next, name)
			}
		}
		if !maps.Equal(next, n.listeners) {
			before := strings.Join(n.addresses(), ",")
			n.listeners = next
			listenersChanged = true
			if n.serviceHost != "" && before != strings.Join(n.addresses(), ",") {
				s.pushAllLocked() // the service gained or lost an endpoint
				return nil
			}
		}
	}
	secretsWanted := typeURL == resource.SecretType && !n.wantsSecrets
	n.wantsSecrets = n.wantsSecrets || secretsWanted
	switch {
	case isNew && n.serviceHost != "":
		s.pushAllLocked()
	case isNew || listenersChanged || secretsWanted:
		s.pushNodeLocked(n.id)
	}
	return nil
}

func (s *Server) onClosed(key streamKey) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.proofs, key)
	n := s.streams[key]
	if n == nil {
		return
	}
	delete(s.streams, key)
	s.logger.Info("node disconnected", "node", n.id)
	stillConnected := false
	for _, other := range s.streams {
		if other.id == n.id {
			stillConnected = true
			break
		}
	}
	if !stillConnected {
		delete(s.sds.minted, n.id)
		s.cache.ClearSnapshot(n.id)
	}
	switch {
	case n.serviceHost != "" && !stillConnected && s.endpointGrace > 0:
		s.departLocked(n)
	case n.serviceHost != "":
		s.pushAllLocked()
	case stillConnected:
		s.pushNodeLocked(n.id)
	}
}

// departure is a serving workload in its grace period.
type departure struct {
	node  *nodeInfo
	timer *time.Timer
}

// departLocked keeps n's endpoints for the grace period, then removes them
// and pushes, unless n connects again first.
func (s *Server) departLocked(n *nodeInfo) {
	d := &departure{node: n}
	d.timer = time.AfterFunc(s.endpointGrace, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if s.closed || s.departed[n.id] != d {
			return
		}
		delete(s.departed, n.id)
		s.logger.Info("workload gone; removing its endpoints", "node", n.id)
		s.pushAllLocked()
	})
	s.departed[n.id] = d
}

// departedNodes lists the departed workloads, by node id.
func (s *Server) departedNodes() []*nodeInfo {
	ids := slices.Sorted(maps.Keys(s.departed))
	out := make([]*nodeInfo, 0, len(ids))
	for _, id := range ids {
		out = append(out, s.departed[id].node)
	}
	return out
}

// parseNode reads istio-style node metadata; malformed values are logged
// and ignored rather than failing the stream.
func (s *Server) parseNode(node *core.Node) *nodeInfo {
	n := &nodeInfo{
		id:          node.GetId(),
		namespace:   "default",
		listeners:   map[string]bool{},
		lastNonce:   map[string]string{},
		lastVersion: map[string]string{},
		labels:      map[string]string{},
	}
	fields := node.GetMetadata().GetFields()
	str := func(key string) string { return fields[key].GetStringValue() }
	if ns := str(metaNamespace); ns != "" {
		n.namespace = ns
	}
	n.serviceAccount = str(metaServiceAccount)
	if n.serviceAccount == "" {
		n.serviceAccount = "default"
	}
	n.workloadName = str(metaWorkloadName)
	if lv, ok := fields[metaLabels].GetKind().(*structpb.Value_StructValue); ok {
		for k, v := range lv.StructValue.GetFields() {
			if sv, ok := v.GetKind().(*structpb.Value_StringValue); ok {
				n.labels[k] = sv.StringValue
			}
		}
	}
	if svc := str(metaService); svc != "" {
		host, portStr, err := net.SplitHostPort(svc)
		port, perr := strconv.ParseUint(portStr, 10, 16)
		switch {
		case err != nil || host == "" || perr != nil || port == 0:
			s.logger.Warn("ignoring malformed node metadata", "node", n.id, "key", metaService, "value", svc)
		default:
			if !strings.Contains(host, ".") {
				host = host + "." + n.namespace + "." + clusterDomain
			}
			n.serviceHost, n.servicePort = host, uint32(port)
		}
	}
	if addr := str(metaAddress); addr != "" {
		if _, _, err := parseHostPort(addr); err != nil {
			s.logger.Warn("ignoring malformed node metadata", "node", n.id, "key", metaAddress, "error", err)
		} else {
			n.address = addr
		}
	}
	return n
}

// watchFile polls path and replaces the configuration when its content
// changes. A rejected file is retried when the service registry changes,
// since a destination it names may have appeared.
func (s *Server) watchFile(ctx context.Context, path string, every time.Duration, lastHash string, lastPushes uint64, lastOK bool) {
	ticker := time.NewTicker(every)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
		data, err := os.ReadFile(path)
		if err != nil {
			s.logger.Warn("config file unreadable; keeping last good config", "file", path, "error", err)
			continue
		}
		h := hashBytes(data)
		s.mu.Lock()
		pushes := s.pushes
		s.mu.Unlock()
		if h == lastHash && (lastOK || pushes == lastPushes) {
			continue
		}
		lastHash, lastPushes = h, pushes
		// The in-code configuration stays under whatever the file holds.
		if err := s.replaceOver(s.baseConfig, data); err != nil {
			if errors.Is(err, ErrClosed) {
				return
			}
			// lastPushes stays as read before the attempt: a registry change
			// since then (say, while this is logged) retries the file.
			lastOK = false
			s.logger.Error("config file rejected; keeping last good config", "file", path, "error", err)
			continue
		}
		lastOK = true
		s.mu.Lock()
		lastPushes = s.pushes
		s.mu.Unlock()
		s.logger.Info("config file applied", "file", path)
	}
}

func hashBytes(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// slogAdapter routes go-control-plane's logs to slog at debug level, except
// warnings and errors.
type slogAdapter struct{ l *slog.Logger }

var _ log.Logger = slogAdapter{}

func (a slogAdapter) Debugf(format string, args ...any) { a.l.Debug(fmt.Sprintf(format, args...)) }
func (a slogAdapter) Infof(format string, args ...any)  { a.l.Debug(fmt.Sprintf(format, args...)) }
func (a slogAdapter) Warnf(format string, args ...any)  { a.l.Warn(fmt.Sprintf(format, args...)) }
func (a slogAdapter) Errorf(format string, args ...any) { a.l.Error(fmt.Sprintf(format, args...)) }
