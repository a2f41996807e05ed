package mesh

import (
	"context"
	"errors"
	"net"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"

	"mesh/internal/flowcontrol"
	"mesh/internal/workers"
	"mesh/transport"
)

// ErrListenerNotFound is the error a serving state callback gets when the
// control plane has no inbound listener resource for a listening address.
var ErrListenerNotFound = transport.ErrListenerNotFound

// GRPCServer is a gRPC server whose transport security comes from the
// control plane (gRFC A36): for each listener it serves, it watches the
// inbound listener resource named by the bootstrap's
// server_listener_resource_name_template and handshakes each connection as
// the matching filter chain says (mTLS with client certificates required
// under STRICT, plaintext under DISABLE). It accepts no connection before
// that resource has arrived, and closes new connections at once while the
// control plane says the resource does not exist (not serving; see
// WithServingStateCallback).
//
// A connection the listener no longer admits as it was handshaken (a
// plaintext one after PERMISSIVE -> STRICT, or any once the resource is
// gone) has its new calls refused, gets GOAWAY and is closed after
// WithDrainPeriod; the others are untouched, and policy changes apply to
// them at once. Headers and concurrent streams are bounded
// (WithMaxHeaderBytes, WithMaxConcurrentStreams).
type GRPCServer struct {
	m       *Mesh
	srv     *grpc.Server
	inbound *transport.GRPCInbound
}

// NewGRPCServer returns a server secured and traced by the mesh. opts are
// applied after the mesh's own; do not pass grpc.Creds. Add interceptors
// with grpc.ChainUnaryInterceptor and grpc.ChainStreamInterceptor: they then
// run inside the mesh's authorization and telemetry. grpc-go runs the one
// set with grpc.UnaryInterceptor (or StreamInterceptor) before every chained
// interceptor, so it would see calls before they are authorized, and calls
// it ends itself would go unmeasured.
//
// Calls run on goroutines the server reuses (grpc.NumStreamWorkers), which
// spares each call the growth of a new goroutine's stack; a handler must
// not leave its goroutine locked to a thread or with pprof labels set.
// Pass grpc.NumStreamWorkers(0) for a goroutine per call. Stop or
// GracefulStop ends the workers.
//
// Its HTTP/2 flow-control windows are fixed (4 MiB per stream, 16 MiB per
// connection), as Envoy's are, rather than grown by grpc-go's estimation,
// which pings the client every round trip while data flows;
// grpc.InitialWindowSize and grpc.InitialConnWindowSize choose others.
func (m *Mesh) NewGRPCServer(opts ...grpc.ServerOption) *GRPCServer {
	inboundOpts := []transport.GRPCInboundOption{transport.WithPeerMetadata(m.peerMetadata)}
	for _, o := range m.inboundOptions() {
		inboundOpts = append(inboundOpts, o)
	}
	s := &GRPCServer{m: m, inbound: transport.NewGRPCInbound(m.xds, m.certs, inboundOpts...)}
	base := append([]grpc.ServerOption{
		grpc.MaxHeaderListSize(uint32(m.limits.maxHeaderBytes)),
		grpc.MaxConcurrentStreams(m.limits.maxConcurrentStreams),
		grpc.NumStreamWorkers(workers.Stream()),
	}, s.inbound.ConnectionOptions()...)
	base = append(base, flowcontrol.ServerOptions()...)
	// Authorization inside telemetry, so denied calls are still measured;
	// one interceptor calling the other spares grpc-go's per-call chain.
	base = append(base, m.serverTelemetry.ServerOptionsAround(s.inbound.UnaryServerInterceptor(), s.inbound.StreamServerInterceptor())...)
	s.srv = grpc.NewServer(append(base, opts...)...)
	return s
}

// inboundOptions are the mesh's settings for its servers' connections.
func (m *Mesh) inboundOptions() []transport.InboundOption {
	opts := []transport.InboundOption{transport.WithLogger(m.logger), transport.WithDrainPeriod(m.limits.drainPeriod),
		transport.WithMaxConnectionAge(m.connectionAge())}
	if m.servingState != nil {
		opts = append(opts, transport.WithServingStateCallback(m.servingState))
	}
	return opts
}

// RegisterService implements grpc.ServiceRegistrar.
func (s *GRPCServer) RegisterService(desc *grpc.ServiceDesc, impl any) {
	s.srv.RegisterService(desc, impl)
}

// GetServiceInfo returns the services registered, as grpc.Server does.
func (s *GRPCServer) GetServiceInfo() map[string]grpc.ServiceInfo { return s.srv.GetServiceInfo() }

// Serve serves lis until Stop or GracefulStop. Connections are accepted only
// once the inbound listener resource for lis's address has arrived.
func (s *GRPCServer) Serve(lis net.Listener) error {
	if s.m.isClosed() {
		return ErrClosed
	}
	name, err := s.m.serverListenerName(lis)
	if err != nil {
		return err
	}
	sl := s.inbound.Listen(lis, name)
	defer sl.Close()
	return s.srv.Serve(sl)
}

// Stop stops the server at once, closing every connection.
func (s *GRPCServer) Stop() { s.srv.Stop() }

// GracefulStop stops accepting connections and waits for pending RPCs.
func (s *GRPCServer) GracefulStop() { s.srv.GracefulStop() }

// serverListenerName applies the gRFC A36 template to lis's address
// (percent-encoding it when the template is an xdstp:// name, gRFC A47);
// lis is closed when there is none.
func (m *Mesh) serverListenerName(lis net.Listener) (string, error) {
	name := m.bootstrap.ServerListenerName(lis.Addr().String())
	if name == "" {
		lis.Close()
		return "", errors.New("mesh: serve: bootstrap has no server_listener_resource_name_template")
	}
	return name, nil
}

// PeerID returns the SPIFFE ID the caller of an RPC proved with its client
// certificate. ok is false for plaintext or unauthenticated callers.
func PeerID(ctx context.Context) (id spiffeid.ID, ok bool) { return transport.PeerID(ctx) }
