package transport_test

import (
	"context"
	"fmt"
	"log"
	"log/slog"
	"net"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"mesh/identity"
	"mesh/identity/identitytest"
	"mesh/internal/handshake"
	"mesh/transport"
	"mesh/xdsclient"
)

// Mutual TLS between a checkout client and a payments server, both with
// SVIDs from one CA; the server handler learns the caller's SPIFFE ID.
func ExampleNewClientCredentials_mutualTLS() {
	ca, err := identitytest.NewCA("example.org")
	if err != nil {
		log.Fatal(err)
	}
	serverSVID, _ := ca.Issue("spiffe://example.org/ns/default/sa/payments", time.Hour)
	clientSVID, _ := ca.Issue("spiffe://example.org/ns/default/sa/checkout", time.Hour)

	// Server: STRICT mTLS on every connection.
	serverProviders := transport.ProviderMap{"default": identity.NewStaticSource(serverSVID, ca.Bundle())}
	strictMTLS := &xdsclient.DownstreamTLS{
		Identity:                 xdsclient.CertificateRef{Provider: "default", Certificate: "default"},
		Roots:                    &xdsclient.CertificateRef{Provider: "default", Certificate: "ROOTCA"},
		RequireClientCertificate: true,
	}
	srv := grpc.NewServer(
		grpc.Creds(transport.NewServerCredentials(serverProviders,
			func(net.Conn, string) (*xdsclient.FilterChain, error) {
				return &xdsclient.FilterChain{Name: "inbound-mtls", TLS: strictMTLS}, nil
			})),
		grpc.UnknownServiceHandler(func(_ any, stream grpc.ServerStream) error {
			if err := stream.RecvMsg(&emptypb.Empty{}); err != nil {
				return err
			}
			caller, _ := transport.PeerID(stream.Context())
			return stream.SendMsg(wrapperspb.String(caller.String()))
		}))
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	served := make(chan struct{})
	go func() {
		defer close(served)
		_ = srv.Serve(lis)
	}()
	defer func() {
		srv.Stop()
		<-served
	}()

	// Client: the balancer would attach the cluster's TLS settings to each
	// address; a manual resolver does it here.
	r := manual.NewBuilderWithScheme("example")
	r.InitialState(resolver.State{Addresses: []resolver.Address{
		handshake.Set(resolver.Address{Addr: lis.Addr().String()}, &handshake.Info{
			Cluster: "outbound|8080||payments.default.svc.cluster.local",
			TLS: &xdsclient.UpstreamTLS{
				Identity: &xdsclient.CertificateRef{Provider: "default", Certificate: "default"},
				Roots:    xdsclient.CertificateRef{Provider: "default", Certificate: "ROOTCA"},
				SubjectAltNames: []xdsclient.StringMatcher{
					{Kind: xdsclient.MatchExact, Value: "spiffe://example.org/ns/default/sa/payments"},
				},
			},
		}),
	}})
	clientProviders := transport.ProviderMap{"default": identity.NewStaticSource(clientSVID, ca.Bundle())}
	conn, err := grpc.NewClient("example:///payments", grpc.WithResolvers(r),
		grpc.WithTransportCredentials(transport.NewClientCredentials(clientProviders)))
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var reply wrapperspb.StringValue
	if err := conn.Invoke(ctx, "/example.Payments/Pay", &emptypb.Empty{}, &reply); err != nil {
		log.Fatal(err)
	}
	fmt.Println("server saw", reply.GetValue())
	// Output: server saw spiffe://example.org/ns/default/sa/checkout
}

func ExampleProviderMap() {
	ca, _ := identitytest.NewCA("example.org")
	svid, _ := ca.Issue("spiffe://example.org/ns/default/sa/payments", time.Hour)
	providers := transport.ProviderMap{"default": identity.NewStaticSource(svid, ca.Bundle())}

	_, found := providers.Provider("default")
	_, missing := providers.Provider("spire")
	fmt.Println(found, missing)
	// Output: true false
}

func ExamplePeerID() {
	// In a gRPC handler; with no peer in the context there is no identity.
	id, ok := transport.PeerID(context.Background())
	fmt.Printf("%q %v\n", id.String(), ok)
	// Output: "" false
}

// The Authorizer's gRPC interceptors go on a server whose credentials come
// from NewServerCredentials, which records each connection's filter chain.
func ExampleNewAuthorizer() {
	authz := transport.NewAuthorizer()
	srv := grpc.NewServer(
		grpc.ChainUnaryInterceptor(authz.UnaryServerInterceptor()),
		grpc.ChainStreamInterceptor(authz.StreamServerInterceptor()))
	defer srv.Stop()
	fmt.Println(len(srv.GetServiceInfo()))
	// Output: 0
}

// staticListener is a ListenerWatcher with one fixed inbound listener
// resource, for a server configured without a control plane.
type staticListener struct{ l *xdsclient.Listener }

func (s staticListener) WatchListener(_ string, fn func(xdsclient.Event[*xdsclient.Listener])) (cancel func()) {
	fn(xdsclient.Event[*xdsclient.Listener]{Resource: s.l})
	return func() {}
}

// A gRPC server whose connections GRPCInbound handles, under STRICT mTLS
// from an inbound listener resource (here a fixed one; a mesh passes its
// xdsclient.Client): a plaintext client is refused at the handshake.
func ExampleNewGRPCInbound() {
	ca, err := identitytest.NewCA("example.org")
	if err != nil {
		log.Fatal(err)
	}
	svid, _ := ca.Issue("spiffe://example.org/ns/default/sa/payments", time.Hour)
	strict := &xdsclient.Listener{Name: "inbound", FilterChains: []xdsclient.FilterChain{{
		Name:  "inbound-mtls",
		Match: xdsclient.FilterChainMatch{TransportProtocol: transport.ProtocolTLS},
		TLS: &xdsclient.DownstreamTLS{
			Identity:                 xdsclient.CertificateRef{Provider: "default", Certificate: "default"},
			Roots:                    &xdsclient.CertificateRef{Provider: "default", Certificate: "ROOTCA"},
			RequireClientCertificate: true,
		},
	}}}
	in := transport.NewGRPCInbound(staticListener{strict},
		transport.ProviderMap{"default": identity.NewStaticSource(svid, ca.Bundle())},
		transport.WithLogger(slog.New(slog.DiscardHandler)),
		transport.WithServingStateCallback(func(_ net.Addr, serving bool, _ error) { fmt.Println("serving:", serving) }))
	srv := grpc.NewServer(in.ServerOptions()...)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	served := make(chan struct{})
	sl := in.Listen(lis, "inbound")
	go func() {
		defer close(served)
		_ = srv.Serve(sl)
	}()
	defer func() {
		srv.Stop()
		<-served
	}()

	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	err = conn.Invoke(ctx, "/example.Payments/Pay", &emptypb.Empty{}, &emptypb.Empty{})
	fmt.Println("plaintext client:", status.Code(err))
	// Output:
	// serving: true
	// plaintext client: Unavailable
}
