package transport_test

import (
	"context"
	"crypto/x509"
	"fmt"
	"log"
	"net"
	"net/url"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
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

// A DENY filter before an ALLOW filter, as istiod emits them: the DENY
// policy wins even for a caller the ALLOW policy admits.
func ExampleEvaluateRBAC_denyBeforeAllow() {
	checkout, _ := url.Parse("spiffe://example.org/ns/default/sa/checkout")
	filters := []xdsclient.HTTPFilter{
		{Name: "envoy.filters.http.rbac.DENY", Config: &xdsclient.RBAC{Rules: &xdsclient.RBACRules{
			Action: xdsclient.RBACDeny,
			Policies: []xdsclient.RBACPolicy{{
				Name:        "ns[default]-policy[deny-refunds]-rule[0]",
				Permissions: []xdsclient.RBACPermission{{Kind: xdsclient.PermissionURLPath, URLPath: &xdsclient.StringMatcher{Kind: xdsclient.MatchExact, Value: "/payments.Payments/Refund"}}},
				Principals:  []xdsclient.RBACPrincipal{{Kind: xdsclient.PrincipalAny}},
			}},
		}}},
		{Name: "envoy.filters.http.rbac", Config: &xdsclient.RBAC{Rules: &xdsclient.RBACRules{
			Action: xdsclient.RBACAllow,
			Policies: []xdsclient.RBACPolicy{{
				Name:        "ns[default]-policy[allow-checkout]-rule[0]",
				Permissions: []xdsclient.RBACPermission{{Kind: xdsclient.PermissionAny}},
				Principals: []xdsclient.RBACPrincipal{{Kind: xdsclient.PrincipalAuthenticated,
					PrincipalName: &xdsclient.StringMatcher{Kind: xdsclient.MatchExact, Value: checkout.String()}}},
			}},
		}}},
	}
	peer := &x509.Certificate{URIs: []*url.URL{checkout}}
	for _, path := range []string{"/payments.Payments/Pay", "/payments.Payments/Refund"} {
		d := transport.EvaluateRBAC(filters, &transport.RBACRequest{PeerCertificate: peer, Method: "POST", Path: path})
		if d.Allowed {
			fmt.Println(path, "allowed")
		} else {
			fmt.Println(path, "denied by", d.Policy)
		}
	}
	// Output:
	// /payments.Payments/Pay allowed
	// /payments.Payments/Refund denied by ns[default]-policy[deny-refunds]-rule[0]
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

func ExampleDetectProtocol() {
	fmt.Println(transport.DetectProtocol([]byte{0x16, 0x03, 0x01}))
	fmt.Println(transport.DetectProtocol([]byte("PRI * HTTP/2.0\r\n")))
	// Output:
	// tls
	// raw_buffer
}

// Paths are normalized as Envoy under Istio does before any policy or
// handler sees them.
func ExampleNormalizePath() {
	for _, p := range []string{"/%61dmin", "/public/%2e%2e/admin", "/public\\..\\admin", "//admin?x=/../y", "/admin%2Fx"} {
		base, _ := transport.NormalizePath(p, transport.PathNormalizationBase)
		strict, _ := transport.NormalizePath(p, transport.PathNormalizationDecodeAndMergeSlashes)
		fmt.Printf("%-22s BASE %-16s DECODE_AND_MERGE_SLASHES %s\n", p, base, strict)
	}
	_, err := transport.NormalizePath("/admin%00", transport.PathNormalizationBase)
	fmt.Println(err)
	// Output:
	// /%61dmin               BASE /admin           DECODE_AND_MERGE_SLASHES /admin
	// /public/%2e%2e/admin   BASE /admin           DECODE_AND_MERGE_SLASHES /admin
	// /public\..\admin       BASE /admin           DECODE_AND_MERGE_SLASHES /admin
	// //admin?x=/../y        BASE //admin?x=/../y  DECODE_AND_MERGE_SLASHES /admin?x=/../y
	// /admin%2Fx             BASE /admin%2Fx       DECODE_AND_MERGE_SLASHES /admin/x
	// path contains %00
}
