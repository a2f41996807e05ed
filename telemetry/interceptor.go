package telemetry

import (
	"context"
	"errors"
	"io"
	"sync/atomic"

	"google.golang.org/grpc"
	grpccodes "google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// ClientInterceptor records what NewClientHandler records (a span per
// attempt, trace context, x-request-id and peer metadata sent, the
// server's peer metadata learned, Istio's metrics with reporter "source",
// the access log) from interceptors instead of a stats handler. Once any
// stats handler is installed, grpc-go builds an object for every event of
// every RPC and copies its metadata, which costs more than all that mesh
// records; interceptors see each call once, at its start and its end.
//
// Install it after interceptors that retry (mesh's routing does), so that
// each attempt is measured on its own, as Envoy measures upstream requests.
type ClientInterceptor struct{ h *handler }

// NewClientInterceptor returns a client interceptor; options are those of
// NewClientHandler. Use one per channel, or WithService naming the target.
func NewClientInterceptor(opts ...GRPCOption) *ClientInterceptor {
	return &ClientInterceptor{h: newHandler(true, opts)}
}

// DialOptions returns the dial options that install the interceptors
// (chained, so they add to any others).
func (c *ClientInterceptor) DialOptions() []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithChainUnaryInterceptor(c.Unary()),
		grpc.WithChainStreamInterceptor(c.Stream()),
	}
}

// Unary returns the interceptor for unary RPCs.
func (c *ClientInterceptor) Unary() grpc.UnaryClientInterceptor { return c.h.interceptUnaryClient }

// Stream returns the interceptor for streaming RPCs.
func (c *ClientInterceptor) Stream() grpc.StreamClientInterceptor { return c.h.interceptStreamClient }

// ServerInterceptor records what NewServerHandler records (the server
// span in the method's context, x-request-id, the client's peer metadata,
// this workload's sent back, Istio's metrics with reporter "destination",
// the access log) from interceptors instead of a stats handler; see
// ClientInterceptor for why. Install it before interceptors that may
// refuse a call (authorization), so that refusals are measured too.
type ServerInterceptor struct {
	h *handler
	// meta is this workload's peer metadata as response headers, built
	// once; grpc-go copies what it is given.
	meta      metadata.MD
	metaBytes int64
}

// NewServerInterceptor returns a server interceptor; options are those of
// NewServerHandler.
func NewServerInterceptor(opts ...GRPCOption) *ServerInterceptor {
	s := &ServerInterceptor{h: newHandler(false, opts)}
	if s.h.metaValue != "" {
		s.meta = metadata.Pairs(HeaderPeerMetadataID, s.h.metaID, HeaderPeerMetadata, s.h.metaValue)
		s.metaBytes = metadataBytes(s.meta)
	}
	return s
}

// ServerOptions returns the server options that install the interceptors
// (chained, so they add to any others).
func (s *ServerInterceptor) ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(s.Unary()),
		grpc.ChainStreamInterceptor(s.Stream()),
	}
}

// ServerOptionsAround returns the server options that install one
// interceptor of each kind, which records as ServerOptions' do and runs
// unary (or stream) inside, with the context the method gets: as if
// chained after telemetry's, so calls inner refuses are measured too, but
// without the closure grpc-go builds per call to chain interceptors. A nil
// interceptor is left out.
func (s *ServerInterceptor) ServerOptionsAround(unary grpc.UnaryServerInterceptor, stream grpc.StreamServerInterceptor) []grpc.ServerOption {
	u, st := s.Unary(), s.Stream()
	if unary != nil {
		u = func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
			return s.unary(ctx, req, info, handler, unary)
		}
	}
	if stream != nil {
		st = func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
			return s.stream(srv, ss, info, handler, stream)
		}
	}
	return []grpc.ServerOption{grpc.ChainUnaryInterceptor(u), grpc.ChainStreamInterceptor(st)}
}

// Unary returns the interceptor for unary RPCs.
func (s *ServerInterceptor) Unary() grpc.UnaryServerInterceptor { return s.interceptUnary }

// Stream returns the interceptor for streaming RPCs.
func (s *ServerInterceptor) Stream() grpc.StreamServerInterceptor { return s.interceptStream }

// callOptions returns opts with the options that collect the connection
// and those of extra that are not nil, in the call's own array when they
// fit.
func (c *grpcClientCall) callOptions(opts []grpc.CallOption, extra ...grpc.CallOption) []grpc.CallOption {
	out := c.callOpts[:0]
	if len(opts)+1+len(extra) > len(c.callOpts) {
		out = make([]grpc.CallOption, 0, len(opts)+1+len(extra))
	}
	// Ours first: their after hooks run in order, and an OnFinish of the
	// caller's may want what telemetry recorded.
	out = append(out, grpc.Peer(&c.peerInfo))
	for _, o := range extra {
		if o != nil {
			out = append(out, o)
		}
	}
	return append(out, opts...)
}

// requestBytesSent sizes the headers of a request the client sent:
// grpc-go's fixed ones, the caller's metadata and what begin added.
func (st *rpcState) requestBytesSent(ctx context.Context, callerMD metadata.MD) int64 {
	n := requestHeaderBytes(st.fullMethod, st.authority, callerMD) + st.headerBytes + grpcUserAgentBytes
	if _, ok := ctx.Deadline(); ok {
		n += grpcTimeoutBytes
	}
	return n
}

// clientResponded reports whether an attempt that ended with err heard
// from the server: headers arrived, or the status is one a server sends
// rather than one the client makes up for a missing answer.
func clientResponded(header metadata.MD, err error) bool {
	if header != nil || err == nil {
		return true
	}
	s, ok := status.FromError(err)
	if !ok {
		return false
	}
	switch s.Code() {
	case grpccodes.Canceled, grpccodes.DeadlineExceeded, grpccodes.Unavailable:
		return false // maybe no answer at all
	}
	return true
}

func (h *handler) interceptUnaryClient(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	callerMD, _ := metadata.FromOutgoingContext(ctx) // nil, and free, when the caller set none
	peers := h.channelPeers(cc)
	carry := carriesPeerMetadata(peers)
	call := new(grpcClientCall)
	rc := h.begin(&call.rpcContext, ctx, method, false, callerMetadata{md: callerMD, known: true}, carry)
	st := &rc.state
	st.authority = targetAuthority(cc.Target())
	// The response headers are asked for only while the server's labels may
	// come in them: when they come with the connection, grpc.Header's copy
	// of the headers would be read for nothing.
	var header grpc.CallOption
	if carry {
		header = grpc.Header(&call.respHeader)
	}
	codec := call.codec.install(h.protoCodec, opts, &call.codecOpt)
	err := invoker(rc, method, req, reply, cc, call.callOptions(opts, header, codec)...)
	h.learnConnection(st, &call.peerInfo, peers)

	st.reqMsgs.Store(1)
	st.reqBytes.Store(st.requestBytesSent(rc, callerMD) + call.codec.sentBytes(req))
	if clientResponded(call.respHeader, err) {
		st.responded.Store(true)
		n := responseHeaderBytes(call.respHeader)
		if call.respHeader == nil && !carry {
			n = grpcResponseFixedBytes + grpcContentTypeBytes // what mesh's servers send
		}
		if err == nil {
			st.respMsgs.Store(1)
			n += call.codec.receivedBytes(reply)
		}
		s, _ := status.FromError(err)
		st.respBytes.Store(n + trailerBytes(int(s.Code()), s.Message()))
		if call.respHeader != nil && !st.connPeer {
			h.learnPeer(st, call.respHeader)
		}
	}
	st.ended.Store(true)
	h.end(rc, st, err, &call.peerInfo)
	return err
}

func (h *handler) interceptStreamClient(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	callerMD, _ := metadata.FromOutgoingContext(ctx)
	peers := h.channelPeers(cc)
	call := new(grpcClientCall)
	rc := h.begin(&call.rpcContext, ctx, method, false, callerMetadata{md: callerMD, known: true}, carriesPeerMetadata(peers))
	st := &rc.state
	st.authority = targetAuthority(cc.Target())
	st.reqBytes.Store(st.requestBytesSent(rc, callerMD))
	cs := &clientStream{h: h, call: call, rc: rc, peers: peers}
	// OnFinish ends the attempt however the stream ends, also when its
	// caller stops reading before the end.
	s, err := streamer(rc, desc, cc, method, call.callOptions(opts, grpc.OnFinish(cs.finish))...)
	if err != nil {
		cs.finish(err)
		return nil, err
	}
	cs.ClientStream = s
	return cs, nil
}

// clientStream counts a client stream's messages and learns the server's
// peer metadata from its headers.
type clientStream struct {
	grpc.ClientStream
	h     *handler
	call  *grpcClientCall
	rc    *rpcContext   // &call.rpcContext
	peers *atomic.Int32 // what the channel's calls found of their connections
}

func (s *clientStream) SendMsg(m any) error {
	err := s.ClientStream.SendMsg(m)
	if err == nil {
		st := &s.rc.state
		st.reqMsgs.Add(1)
		st.reqBytes.Add(messageWireBytes(m))
	}
	return err
}

func (s *clientStream) Header() (metadata.MD, error) {
	md, err := s.ClientStream.Header()
	s.sawHeader(md)
	return md, err
}

func (s *clientStream) RecvMsg(m any) error {
	st := &s.rc.state
	if !st.responded.Load() {
		// Headers come before the first message (or with the end of a
		// trailers-only stream), so asking first never waits longer than
		// RecvMsg would. The attempt must learn them before it ends.
		md, _ := s.ClientStream.Header()
		s.sawHeader(md)
	}
	err := s.ClientStream.RecvMsg(m)
	if err == nil {
		st.respMsgs.Add(1)
		st.respBytes.Add(messageWireBytes(m))
	}
	return err
}

func (s *clientStream) sawHeader(md metadata.MD) {
	st := &s.rc.state
	if md != nil && st.responded.CompareAndSwap(false, true) {
		st.respBytes.Add(responseHeaderBytes(md))
		if !st.connPeer {
			s.h.learnPeer(st, md)
		}
	}
}

// finish ends the attempt once, with the stream's final error (nil or
// io.EOF for success).
func (s *clientStream) finish(err error) {
	st := &s.rc.state
	if !st.ended.CompareAndSwap(false, true) {
		return
	}
	if errors.Is(err, io.EOF) {
		err = nil
	}
	if st.responded.Load() || clientResponded(nil, err) {
		st.responded.Store(true)
		sc, _ := status.FromError(err)
		st.respBytes.Add(trailerBytes(int(sc.Code()), sc.Message()))
	}
	s.h.learnConnection(st, &s.call.peerInfo, s.peers)
	s.h.end(s.rc, st, err, &s.call.peerInfo)
}

func (s *ServerInterceptor) begin(ctx context.Context, method string) *rpcContext {
	h := s.h
	rc := h.begin(new(rpcContext), ctx, method, false, callerMetadata{}, false) // also reads the peer's addresses
	st := &rc.state
	// What a gRPC request always carries, the headers begin read, and two
	// more a mesh client sends, sized as mesh sends them: reading a header
	// copies it. Other headers go uncounted: the metadata cannot be walked
	// without copying all of it.
	n := int64(grpcRequestFixedBytes+len(method)) + grpcContentTypeBytes + st.headerBytes + grpcUserAgentBytes
	if w := st.peer.Load(); w != nil && !st.connPeer {
		n += int64(len(HeaderPeerMetadataID) + peerIDLen(w))
	}
	st.reqBytes.Store(n)
	st.respBytes.Store(grpcResponseFixedBytes + grpcContentTypeBytes)
	return rc
}

// done ends a server RPC that returned err.
func (s *ServerInterceptor) done(rc *rpcContext, err error) {
	st := &rc.state
	sc, _ := status.FromError(err)
	st.respBytes.Add(trailerBytes(int(sc.Code()), sc.Message()))
	st.ended.Store(true)
	s.h.end(rc, st, err, nil)
}

func (s *ServerInterceptor) interceptUnary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	return s.unary(ctx, req, info, handler, nil)
}

// unary records a unary call whose method is handler, run through inner
// when inner is not nil.
func (s *ServerInterceptor) unary(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler, inner grpc.UnaryServerInterceptor) (any, error) {
	rc := s.begin(ctx, info.FullMethod)
	st := &rc.state
	if s.meta != nil && !st.connPeer {
		// Only fails when the headers were already sent, which cannot
		// have happened before the method runs. A client that exchanged
		// its metadata at the handshake has this workload's from there.
		if grpc.SetHeader(rc, s.meta) == nil {
			st.respBytes.Add(s.metaBytes)
		}
	}
	st.reqMsgs.Store(1)
	st.reqBytes.Add(messageWireBytes(req))
	var resp any
	var err error
	if inner != nil {
		resp, err = inner(rc, req, info, handler)
	} else {
		resp, err = handler(rc, req)
	}
	if err == nil {
		st.respMsgs.Store(1)
		st.respBytes.Add(messageWireBytes(resp))
	}
	s.done(rc, err)
	return resp, err
}

func (s *ServerInterceptor) interceptStream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
	return s.stream(srv, ss, info, handler, nil)
}

// stream records a stream whose method is handler, run through inner
// when inner is not nil.
func (s *ServerInterceptor) stream(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler, inner grpc.StreamServerInterceptor) error {
	rc := s.begin(ss.Context(), info.FullMethod)
	if s.meta != nil && !rc.state.connPeer && ss.SetHeader(s.meta) == nil {
		rc.state.respBytes.Add(s.metaBytes)
	}
	var err error
	if wrapped := (&serverStream{ServerStream: ss, rc: rc}); inner != nil {
		err = inner(srv, wrapped, info, handler)
	} else {
		err = handler(srv, wrapped)
	}
	s.done(rc, err)
	return err
}

// serverStream gives the method the RPC's context and counts messages.
type serverStream struct {
	grpc.ServerStream
	rc *rpcContext
}

func (s *serverStream) Context() context.Context { return s.rc }

func (s *serverStream) SendMsg(m any) error {
	err := s.ServerStream.SendMsg(m)
	if err == nil {
		s.rc.state.respMsgs.Add(1)
		s.rc.state.respBytes.Add(messageWireBytes(m))
	}
	return err
}

func (s *serverStream) RecvMsg(m any) error {
	err := s.ServerStream.RecvMsg(m)
	if err == nil {
		s.rc.state.reqMsgs.Add(1)
		s.rc.state.reqBytes.Add(messageWireBytes(m))
	}
	return err
}
