package telemetry

import (
	"context"
	"crypto/tls"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	grpccodes "google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"

	"mesh/internal/incomingmd"
	"mesh/internal/routeinfo"
)

// instrumentationName names the tracer, so backends can tell mesh's spans
// from those of other instrumentation.
const instrumentationName = "mesh/telemetry"

// Attribute keys from the OpenTelemetry semantic conventions for RPC spans.
const (
	keyRPCSystem         = attribute.Key("rpc.system")
	keyRPCService        = attribute.Key("rpc.service")
	keyRPCMethod         = attribute.Key("rpc.method")
	keyRPCGRPCStatusCode = attribute.Key("rpc.grpc.status_code")
	keyServerAddress     = attribute.Key("server.address")
	keyServerPort        = attribute.Key("server.port")
	keyPeerAddress       = attribute.Key("network.peer.address")
	keyPeerPort          = attribute.Key("network.peer.port")
)

// Span attributes Envoy records, under Envoy's names, so spans from proxies
// and from proxyless workloads read alike.
const (
	keyRequestID       = attribute.Key("guid:x-request-id")
	keyUpstreamCluster = attribute.Key("upstream_cluster")
	keyUpstreamSubset  = attribute.Key("upstream_subset")
	keyUpstreamAddress = attribute.Key("upstream_address")
	keyRetryCount      = attribute.Key("retry.count")
	keyResponseFlags   = attribute.Key("response_flags")
)

// setRouteAttributes records what the router decided, when it said.
func setRouteAttributes(span trace.Span, route RouteInfo, flags string) {
	if route.Cluster != "" {
		span.SetAttributes(keyUpstreamCluster.String(route.Cluster))
	}
	if route.Subset != "" {
		span.SetAttributes(keyUpstreamSubset.String(route.Subset))
	}
	if route.Endpoint != "" {
		span.SetAttributes(keyUpstreamAddress.String(route.Endpoint))
	}
	if route.Retries > 0 {
		span.SetAttributes(keyRetryCount.Int(route.Retries))
	}
	if flags != "" && flags != noResponseFlags {
		span.SetAttributes(keyResponseFlags.String(flags))
	}
}

// NewClientHandler returns a gRPC stats handler for a client channel. For
// every RPC attempt it records a client span, sends the span's trace context,
// an x-request-id and (given WithWorkload) this workload's Istio peer
// metadata in the request metadata, learns the server's peer metadata from
// the response headers, and records Istio's standard metrics with reporter
// "source" and an access log record. Install it with grpc.WithStatsHandler;
// use one handler per channel, with WithService naming the target host.
func NewClientHandler(opts ...GRPCOption) stats.Handler {
	return newHandler(true, opts)
}

// ServerHandler is the gRPC stats handler of a server, with the interceptors
// that send this workload's peer metadata in response headers (a stats
// handler cannot write headers). ServerOptions installs all three.
type ServerHandler struct{ h *handler }

var _ stats.Handler = (*ServerHandler)(nil)

// NewServerHandler returns a gRPC server handler. For every RPC it continues
// the trace context a client sent, records a server span and puts it in the
// context the service method receives, reads (or generates) the
// x-request-id and the client's Istio peer metadata, and records Istio's
// standard metrics with reporter "destination" and an access log record.
// Install it with grpc.NewServer(h.ServerOptions()...), or with
// grpc.StatsHandler(h) alone when peers need not learn this workload's
// labels.
func NewServerHandler(opts ...GRPCOption) *ServerHandler {
	return &ServerHandler{h: newHandler(false, opts)}
}

// TagRPC implements stats.Handler.
func (s *ServerHandler) TagRPC(ctx context.Context, info *stats.RPCTagInfo) context.Context {
	return s.h.TagRPC(ctx, info)
}

// HandleRPC implements stats.Handler.
func (s *ServerHandler) HandleRPC(ctx context.Context, rs stats.RPCStats) { s.h.HandleRPC(ctx, rs) }

// TagConn implements stats.Handler.
func (s *ServerHandler) TagConn(ctx context.Context, info *stats.ConnTagInfo) context.Context {
	return s.h.TagConn(ctx, info)
}

// HandleConn implements stats.Handler.
func (s *ServerHandler) HandleConn(ctx context.Context, cs stats.ConnStats) { s.h.HandleConn(ctx, cs) }

// UnaryInterceptor returns an interceptor that adds this workload's peer
// metadata to the response headers of unary RPCs.
func (s *ServerHandler) UnaryInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if s.h.metaValue != "" {
			// Only fails when the headers were already sent, which cannot
			// have happened before the method runs.
			_ = grpc.SetHeader(ctx, metadata.Pairs(HeaderPeerMetadataID, s.h.metaID, HeaderPeerMetadata, s.h.metaValue))
		}
		return handler(ctx, req)
	}
}

// StreamInterceptor returns an interceptor that adds this workload's peer
// metadata to the response headers of streaming RPCs.
func (s *ServerHandler) StreamInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if s.h.metaValue != "" {
			_ = ss.SetHeader(metadata.Pairs(HeaderPeerMetadataID, s.h.metaID, HeaderPeerMetadata, s.h.metaValue))
		}
		return handler(srv, ss)
	}
}

// ServerOptions returns the server options that install the handler and
// its interceptors (chained, so they add to any others).
func (s *ServerHandler) ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.StatsHandler(s),
		grpc.ChainUnaryInterceptor(s.UnaryInterceptor()),
		grpc.ChainStreamInterceptor(s.StreamInterceptor()),
	}
}

// handler is the one stats.Handler behind both constructors. Each concern
// (traces, metrics, access logs) keeps its long-lived parts in core and its
// per-RPC parts in rpcState, so an RPC pays for one state allocation however
// many concerns are switched on.
type handler struct {
	*core
	// startOptions is built once: passing a fresh variadic slice to the
	// Tracer interface would allocate on every RPC.
	startOptions []trace.SpanStartOption
	systemAttr   attribute.KeyValue
	// headers lends a client RPC its scratch space for injection while it
	// starts: kept out of rpcState, whose size every RPC of both sides pays.
	headers sync.Pool
	// requestIDs makes the IDs of client calls that carry none.
	requestIDs requestIDSource
	// incoming reads a server call's headers without copying them.
	incoming incomingmd.Reader
	// protoCodec is what a client's unary calls are sized with.
	protoCodec *protoCodec
	// channels holds, per client channel, what its calls found of their
	// connections: whether servers exchange peer metadata at the
	// handshake (an *atomic.Int32 of the peersExchange values).
	channels     sync.Map // *grpc.ClientConn -> *atomic.Int32
	channelCount atomic.Int32
}

// What a client channel's calls have found of their servers' connections
// (handler.channels).
const (
	// Until a call finds out, calls send peer metadata headers and read
	// the server's from the response.
	peersExchangeUnknown int32 = iota
	// Every connection so far exchanged it at the handshake: calls carry
	// no peer metadata headers and ask for no response headers.
	peersExchangeAll
	// Some connection did not: calls carry the headers from then on.
	peersExchangeNotAll
)

// maxChannels bounds handler.channels; past it the map starts over, and
// each channel's calls find out again.
const maxChannels = 1024

// channelPeers returns what the calls of cc found of their connections.
func (h *handler) channelPeers(cc *grpc.ClientConn) *atomic.Int32 {
	if h.peerAuthMeta == nil {
		return nil
	}
	if v, ok := h.channels.Load(cc); ok {
		return v.(*atomic.Int32)
	}
	if h.channelCount.Add(1) > maxChannels {
		h.channels.Clear()
		h.channelCount.Store(1)
	}
	v, _ := h.channels.LoadOrStore(cc, new(atomic.Int32))
	return v.(*atomic.Int32)
}

// carriesPeerMetadata reports whether a client call on a channel whose
// calls found peers should send its peer metadata in headers and read
// the server's from the response.
func carriesPeerMetadata(peers *atomic.Int32) bool {
	return peers == nil || peers.Load() != peersExchangeAll
}

// peerFromConnection returns the peer's workload as its connection's
// credentials reported it (WithPeerAuthMetadata), or nil.
func (h *handler) peerFromConnection(ai credentials.AuthInfo) *Workload {
	if h.peerAuthMeta == nil || ai == nil {
		return nil
	}
	value, ok := h.peerAuthMeta(ai)
	if !ok {
		return nil
	}
	return h.peerFromHeader(value)
}

// learnConnection takes a client call's server labels from the
// connection it went over, when the server exchanged them there, and
// remembers in peers, for the channel's later calls, whether it did.
func (h *handler) learnConnection(st *rpcState, p *peer.Peer, peers *atomic.Int32) {
	if peers == nil || p.AuthInfo == nil {
		return // no connection: nothing learned
	}
	if w := h.peerFromConnection(p.AuthInfo); w != nil {
		st.peer.Store(w)
		st.connPeer = true
		peers.CompareAndSwap(peersExchangeUnknown, peersExchangeAll)
		return
	}
	if peers.Load() != peersExchangeNotAll {
		peers.Store(peersExchangeNotAll)
	}
}

func newHandler(client bool, opts []GRPCOption) *handler {
	kind := trace.SpanKindServer
	if client {
		kind = trace.SpanKindClient
	}
	return &handler{
		core:         newCore(client, grpcOptions(opts)),
		startOptions: []trace.SpanStartOption{trace.WithSpanKind(kind)},
		systemAttr:   keyRPCSystem.String("grpc"),
		headers:      sync.Pool{New: func() any { return new(outgoingHeaders) }},
		incoming:     incomingmd.NewReader(),
		protoCodec:   newProtoCodec(),
	}
}

// rpcState is what a handler remembers about one RPC (one attempt, on the
// client) between its start and the end that closes it. Events of one
// streaming RPC can arrive on different goroutines, hence the atomics and
// the mutex.
type rpcState struct {
	span       trace.Span
	unstarted  unstartedSpan // span when the sampler's answer was known
	start      time.Time
	fullMethod string
	requestID  string
	route      *routeinfo.Slot
	ownRoute   routeinfo.Slot
	ended      atomic.Bool
	responded  atomic.Bool // the client saw response headers or trailers
	// connPeer: the peer's metadata came from its connection
	// (WithPeerAuthMetadata), so no call on it carries it in headers.
	connPeer bool
	// incomingCase is what reading incomingMD learned about its keys.
	incomingCase incomingmd.KeyCase
	// previousAttempts is the client's grpc-previous-rpc-attempts (gRFC
	// A6), which the mesh's retry interceptor sets on retries.
	previousAttempts int32
	peer             atomic.Pointer[Workload]
	reqBytes         atomic.Int64 // wire bytes: headers (uncompressed) and messages
	respBytes        atomic.Int64
	reqMsgs          atomic.Int64
	respMsgs         atomic.Int64

	mu        sync.Mutex
	authority string
	remote    net.Addr
	local     net.Addr

	// headerBytes sizes the headers begin wrote (client) or read (server),
	// for the interceptors, which see no whole header block.
	headerBytes int64
	// incomingMD is a server RPC's incoming metadata while begin reads it,
	// found once: every lookup in the context walks all its layers.
	incomingMD metadata.MD
}

// grpcClientCall is a gRPC client attempt's rpcContext with what the
// interceptors collect through call options, which a server RPC does
// without: apart, each side's allocation fits a smaller size class. On
// 64-bit platforms an rpcContext fits the runtime's 320-byte class and a
// grpcClientCall its 480-byte class; mind them when adding fields.
type grpcClientCall struct {
	rpcContext
	respHeader metadata.MD
	peerInfo   peer.Peer
	callOpts   [4]grpc.CallOption
	codec      sizingCodec
	codecOpt   grpc.ForceCodecV2CallOption // installs codec
}

// rpcStateKey names the handler that owns a state, so that two handlers
// installed on one channel or server each find their own.
type rpcStateKey struct{ owner *handler }

// rpcContext carries an rpcState. It stands in for context.WithValue so
// that the context node and the state are a single allocation.
type rpcContext struct {
	context.Context
	owner *handler
	state rpcState
}

func (c *rpcContext) Value(key any) any {
	switch k := key.(type) {
	case rpcStateKey:
		if k.owner == c.owner {
			return &c.state
		}
	case routeinfo.SlotKey:
		// Only client attempts are routed. A server's context must not
		// offer one: calls its method makes would share and overwrite it.
		if c.owner.client {
			return c.state.route
		}
	case requestIDKey:
		return c.state.requestID
	}
	return c.Context.Value(key)
}

func (h *handler) stateFromContext(ctx context.Context) *rpcState {
	st, _ := ctx.Value(rpcStateKey{owner: h}).(*rpcState)
	return st
}

// TagRPC starts the RPC's span. On the client it also writes the span's
// trace context, the request ID and this workload's peer metadata into the
// outgoing metadata; on the server it first reads the client's.
func (h *handler) TagRPC(ctx context.Context, info *stats.RPCTagInfo) context.Context {
	var fullMethod string
	var nameResolutionDelayed bool
	if info != nil {
		fullMethod = info.FullMethodName
		nameResolutionDelayed = info.NameResolutionDelay
	}
	return h.begin(new(rpcContext), ctx, fullMethod, nameResolutionDelayed, callerMetadata{}, true)
}

// callerMetadata is the outgoing metadata a client call carried before
// telemetry added to it, when the caller already read it (interceptors
// do): looking keys up in it spares walking the context for each.
type callerMetadata struct {
	md    metadata.MD // a copy, keys in lower case; nil when there was none
	known bool
}

// has reports whether the caller's outgoing metadata has key (lower case).
func (c callerMetadata) has(ctx context.Context, key string) bool {
	if !c.known {
		return metadata.ValueFromOutgoingContext(ctx, key) != nil
	}
	_, ok := c.md[key]
	return ok
}

// value returns the first value of key (lower case) in the caller's
// outgoing metadata.
func (c callerMetadata) value(ctx context.Context, key string) string {
	if !c.known {
		return outgoingValue(ctx, key)
	}
	if v := c.md[key]; len(v) > 0 {
		return v[0]
	}
	return ""
}

// begin starts an RPC, for the stats handler and the interceptors alike:
// its span and request ID, read from the request (server) or written into
// it with this workload's peer metadata when sendPeer says so (client).
// A server takes the client's peer metadata from the connection when the
// client exchanged it there, else from the request's headers.
//
// rc is the zero rpcContext begin fills in and returns: the caller
// allocates it, alone or within a grpcClientCall.
func (h *handler) begin(rc *rpcContext, ctx context.Context, fullMethod string, nameResolutionDelayed bool, caller callerMetadata, sendPeer bool) *rpcContext {
	rc.owner = h
	rc.state.fullMethod, rc.state.start = fullMethod, h.now()
	st := &rc.state
	st.route = &st.ownRoute
	if h.client {
		if slot, _ := ctx.Value(routeinfo.SlotKey{}).(*routeinfo.Slot); slot != nil {
			st.route = slot // an outer handler's slot: the router fills one for both
		}
	}
	var callerSentID bool // the caller's outgoing metadata has an x-request-id
	if h.client {
		st.requestID = caller.value(ctx, HeaderRequestID)
		callerSentID = st.requestID != ""
		if v := caller.value(ctx, headerPreviousAttempts); v != "" {
			if n, err := strconv.ParseInt(v, 10, 32); err == nil {
				st.previousAttempts = int32(n)
			}
		}
	} else {
		st.incomingMD = h.incoming.Metadata(ctx)
		in := (*incomingHeaders)(rc)
		ctx = h.propagator.Extract(ctx, in)
		st.requestID = in.Get(HeaderRequestID)
		var w *Workload
		if p, ok := peer.FromContext(ctx); ok {
			// The stats handler learns the addresses again from InHeader.
			st.remote, st.local = p.Addr, p.LocalAddr
			w = h.peerFromConnection(p.AuthInfo)
			st.connPeer = w != nil
		}
		if w == nil {
			w = h.peerFromHeader(in.Get(HeaderPeerMetadata))
		}
		if w != nil {
			st.peer.Store(w)
		}
		st.authority = in.Get(":authority")
		st.incomingMD = nil
	}
	inheritedID := st.requestID != ""
	if !inheritedID {
		st.requestID, inheritedID = RequestIDFromContext(ctx)
		if !inheritedID {
			st.requestID = h.requestIDs.next()
		}
	}
	parent := trace.SpanContextFromContext(ctx)
	var span trace.Span
	started := !h.unsampled.skip(parent)
	if started {
		ctx, span = h.tracer.Start(ctx, spanName(fullMethod), h.startOptions...)
	} else {
		st.unstarted.sc = parent
		span = &st.unstarted
	}
	st.span = span
	if span.IsRecording() {
		h.setMethodAttributes(span, fullMethod, st.requestID)
		if nameResolutionDelayed {
			span.AddEvent("delayed name resolution complete")
		}
	}
	if h.client {
		hd := h.headers.Get().(*outgoingHeaders)
		hd.reset()
		injectCtx := ctx
		if h.sendsParent && started && parent.IsValid() {
			injectCtx = withParentSpanID(ctx, parent.SpanID())
		}
		h.propagator.Inject(injectCtx, hd)
		if !callerSentID {
			hd.Set(HeaderRequestID, st.requestID)
		}
		if h.metaValue != "" && sendPeer {
			hd.Set(HeaderPeerMetadataID, h.metaID)
			hd.Set(HeaderPeerMetadata, h.metaValue)
		}
		ctx = hd.attachOutgoing(ctx, caller)
		st.headerBytes = kvBytes(hd.kv)
		*hd = outgoingHeaders{} // the metadata holds its own copy now; keep no strings alive
		h.headers.Put(hd)
	}
	rc.Context = ctx
	return rc
}

// HandleRPC adds what the RPC's events reveal to its state and span, and
// records everything when the RPC ends.
func (h *handler) HandleRPC(ctx context.Context, rs stats.RPCStats) {
	st := h.stateFromContext(ctx)
	if st == nil {
		return // not an RPC this handler tagged
	}
	span := st.span
	switch rs := rs.(type) {
	case *stats.OutHeader:
		if h.client {
			st.mu.Lock()
			st.authority = rs.Authority
			st.remote = rs.RemoteAddr
			st.mu.Unlock()
			st.reqBytes.Add(requestHeaderBytes(st.fullMethod, rs.Authority, rs.Header))
			if span.IsRecording() {
				setServerAttributes(span, rs.Authority)
				setPeerAttributes(span, rs.RemoteAddr)
			}
		} else {
			st.respBytes.Add(responseHeaderBytes(rs.Header))
		}
	case *stats.InHeader:
		if h.client {
			st.responded.Store(true)
			st.respBytes.Add(responseHeaderBytes(rs.Header))
			h.learnPeer(st, rs.Header)
		} else {
			st.mu.Lock()
			st.remote = rs.RemoteAddr
			st.local = rs.LocalAddr
			st.mu.Unlock()
			// The server's metadata holds :authority among the headers.
			st.reqBytes.Add(requestHeaderBytes(rs.FullMethod, "", rs.Header))
			if span.IsRecording() {
				setPeerAttributes(span, rs.RemoteAddr)
			}
		}
	case *stats.InTrailer:
		if h.client {
			st.responded.Store(true)
			st.respBytes.Add(metadataBytes(rs.Trailer))
			h.learnPeer(st, rs.Trailer) // a trailers-only response carries headers here
		}
	case *stats.OutTrailer:
		if !h.client {
			st.respBytes.Add(metadataBytes(rs.Trailer))
		}
	case *stats.InPayload:
		if h.client {
			st.respBytes.Add(int64(rs.WireLength))
			st.respMsgs.Add(1)
		} else {
			st.reqBytes.Add(int64(rs.WireLength))
			st.reqMsgs.Add(1)
		}
	case *stats.OutPayload:
		if h.client {
			st.reqBytes.Add(int64(rs.WireLength))
			st.reqMsgs.Add(1)
		} else {
			st.respBytes.Add(int64(rs.WireLength))
			st.respMsgs.Add(1)
		}
	case *stats.DelayedPickComplete:
		if span.IsRecording() {
			span.AddEvent("delayed load balancer pick complete")
		}
	case *stats.End:
		if st.ended.CompareAndSwap(false, true) {
			if !h.client || st.responded.Load() {
				// grpc-go leaves grpc-status and grpc-message out of the
				// trailer metadata it reports; they were on the wire.
				s, _ := status.FromError(rs.Error)
				st.respBytes.Add(trailerBytes(int(s.Code()), s.Message()))
			}
			h.end(ctx, st, rs.Error, nil)
		}
	}
}

func (h *handler) learnPeer(st *rpcState, md metadata.MD) {
	if v := md.Get(HeaderPeerMetadata); len(v) > 0 {
		if w := h.peerFromHeader(v[0]); w != nil {
			st.peer.Store(w)
		}
	}
}

// TagConn returns ctx unchanged: everything is per RPC.
func (h *handler) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context {
	return ctx
}

// HandleConn ignores connection events.
func (h *handler) HandleConn(context.Context, stats.ConnStats) {}

// headerPreviousAttempts counts the attempts of a call made before this one
// (gRFC A6).
const headerPreviousAttempts = "grpc-previous-rpc-attempts"

// end finishes the span and records metrics and the access log. p, when
// not nil, is the connection the RPC went over, for a ctx that lacks it
// (a client interceptor's).
func (h *handler) end(ctx context.Context, st *rpcState, err error, p *peer.Peer) {
	code := grpccodes.OK
	var message string
	if err != nil {
		s := status.Convert(err)
		code, message = s.Code(), s.Message()
	}
	route := routeInfo(ctx, st.route)
	if h.client && route.Retries == 0 {
		// The mesh's retry interceptor numbers gRPC attempts as gRFC A6
		// does; the picker's route info is shared by all of them.
		route.Retries = int(st.previousAttempts)
	}
	st.mu.Lock()
	ex := exchange{
		protocol:         protocolGRPC,
		httpProtocol:     "HTTP/2",
		method:           "POST",
		path:             st.fullMethod,
		authority:        st.authority,
		peer:             st.peer.Load(),
		responseCode:     grpcHTTPStatus,
		grpcStatus:       strconv.Itoa(int(code)),
		flags:            route.ResponseFlags,
		start:            st.start,
		duration:         h.now().Sub(st.start),
		requestBytes:     st.reqBytes.Load(),
		responseBytes:    st.respBytes.Load(),
		requestMessages:  st.reqMsgs.Load(),
		responseMessages: st.respMsgs.Load(),
		route:            route,
		remote:           st.remote,
		local:            st.local,
		requestID:        st.requestID,
		spanContext:      st.span.SpanContext(),
	}
	st.mu.Unlock()
	ex.peerPrincipal, ex.mutualTLS = h.peerSecurity(ctx, p)
	if h.client && !st.responded.Load() {
		ex.responseCode = noResponseStatus
	}
	if ex.flags == "" {
		ex.flags = grpcResponseFlags(h.client, st.responded.Load(), code)
	}

	span := st.span
	if span.IsRecording() {
		if err != nil && (h.client || serverFault(code)) {
			span.SetStatus(codes.Error, message)
		}
		span.SetAttributes(keyRPCGRPCStatusCode.Int(int(code)))
		setRouteAttributes(span, route, ex.flags)
	}
	span.End()
	h.record(ctx, &ex)
}

// grpcResponseFlags derives Envoy response flags from how an RPC failed.
func grpcResponseFlags(client, responded bool, code grpccodes.Code) string {
	switch {
	case code == grpccodes.Canceled:
		return "DC" // the caller went away
	case client && !responded && code == grpccodes.Unavailable:
		return "UF" // no connection to the upstream
	case client && !responded && code == grpccodes.DeadlineExceeded:
		return "UT" // the upstream did not answer in time
	}
	return noResponseFlags
}

// peerSecurity returns the verified SPIFFE ID of the RPC's peer and whether
// the connection is mutual TLS (the peer proved an identity).
func (h *handler) peerSecurity(ctx context.Context, p *peer.Peer) (string, bool) {
	if h.peerAuthID != nil {
		if p == nil {
			var ok bool
			if p, ok = peer.FromContext(ctx); !ok {
				return "", false
			}
		}
		id, ok := h.peerAuthID(p.AuthInfo)
		return id, ok && id != ""
	}
	if h.peerIdentity != nil {
		if p != nil {
			ctx = peer.NewContext(ctx, p)
		}
		id, ok := h.peerIdentity(ctx)
		return id, ok && id != ""
	}
	if p == nil {
		var ok bool
		if p, ok = peer.FromContext(ctx); !ok {
			return "", false
		}
	}
	var state *tls.ConnectionState
	switch ai := p.AuthInfo.(type) {
	case credentials.TLSInfo:
		state = &ai.State
	case *credentials.TLSInfo:
		if ai != nil {
			state = &ai.State
		}
	}
	id := principalOf(state)
	return id, id != ""
}

// principalOf returns the SPIFFE ID in the peer's leaf certificate, if any.
func principalOf(state *tls.ConnectionState) string {
	if state == nil || len(state.PeerCertificates) == 0 {
		return ""
	}
	for _, u := range state.PeerCertificates[0].URIs {
		if u.Scheme == "spiffe" {
			return u.String()
		}
	}
	return ""
}

func addrString(a net.Addr) string {
	if a == nil {
		return ""
	}
	return a.String()
}

// outgoingValue returns the first value of key in ctx's outgoing metadata.
func outgoingValue(ctx context.Context, key string) string {
	if v := metadata.ValueFromOutgoingContext(ctx, key); len(v) > 0 {
		return v[0]
	}
	return ""
}

// serverFault reports whether a server span should be marked as an error:
// the semantic conventions count only codes that point at the server itself,
// not those that blame the caller (NotFound, InvalidArgument, ...).
func serverFault(c grpccodes.Code) bool {
	switch c {
	case grpccodes.Unknown, grpccodes.DeadlineExceeded, grpccodes.Unimplemented,
		grpccodes.Internal, grpccodes.Unavailable, grpccodes.DataLoss:
		return true
	}
	return false
}

// spanName turns "/package.Service/Method" into "package.Service/Method", as
// the RPC semantic conventions name spans.
func spanName(fullMethod string) string {
	name := strings.TrimPrefix(fullMethod, "/")
	if name == "" {
		return "grpc"
	}
	return name
}

// splitMethod splits "/package.Service/Method" into its service and method;
// a name without a service yields only a method.
func splitMethod(fullMethod string) (service, method string) {
	name := strings.TrimPrefix(fullMethod, "/")
	if i := strings.LastIndexByte(name, '/'); i >= 0 {
		return name[:i], name[i+1:]
	}
	return "", name
}

func (h *handler) setMethodAttributes(span trace.Span, fullMethod, requestID string) {
	service, method := splitMethod(fullMethod)
	attrs := make([]attribute.KeyValue, 0, 4+len(h.extraAttrs))
	attrs = append(attrs, h.systemAttr, keyRequestID.String(requestID))
	if service != "" {
		attrs = append(attrs, keyRPCService.String(service))
	}
	if method != "" {
		attrs = append(attrs, keyRPCMethod.String(method))
	}
	attrs = append(attrs, h.extraAttrs...)
	span.SetAttributes(attrs...)
}

// setServerAttributes records the logical server the client addressed: the
// request's :authority, not the IP it resolved to.
func setServerAttributes(span trace.Span, authority string) {
	if authority == "" {
		return
	}
	host, port, ok := splitHostPort(authority)
	if !ok {
		span.SetAttributes(keyServerAddress.String(authority))
		return
	}
	span.SetAttributes(keyServerAddress.String(host), keyServerPort.Int(port))
}

// setPeerAttributes records the address at the other end of the connection.
func setPeerAttributes(span trace.Span, addr net.Addr) {
	if addr == nil {
		return
	}
	if tcp, ok := addr.(*net.TCPAddr); ok {
		span.SetAttributes(keyPeerAddress.String(tcp.IP.String()), keyPeerPort.Int(tcp.Port))
		return
	}
	s := addr.String()
	if host, port, ok := splitHostPort(s); ok {
		span.SetAttributes(keyPeerAddress.String(host), keyPeerPort.Int(port))
		return
	}
	if s != "" {
		span.SetAttributes(keyPeerAddress.String(s))
	}
}

func splitHostPort(hostport string) (host string, port int, ok bool) {
	host, portText, err := net.SplitHostPort(hostport)
	if err != nil {
		return "", 0, false
	}
	port, err = strconv.Atoi(portText)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, false
	}
	return host, port, true
}
