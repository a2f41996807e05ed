package telemetry_test

import (
	"context"
	"net"
	"sync/atomic"
	"testing"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"

	"mesh/identity"
	"mesh/identity/identitytest"
	"mesh/internal/handshake"
	"mesh/internal/testutil"
	"mesh/telemetry"
	"mesh/transport"
	"mesh/xdsclient"
)

// peerMetadataOf reads what mesh's transport credentials exchanged, as the
// mesh facade wires it.
func peerMetadataOf(ai credentials.AuthInfo) (string, bool) {
	a, ok := ai.(transport.AuthInfo)
	return a.PeerMetadata, ok && a.PeerMetadata != ""
}

// A channel's calls, unary and streams, stop carrying peer metadata
// headers once its server is found to exchange them at the handshake; a
// channel of the same client to a server that does not keeps sending them
// on every call, and both servers label every call with the client's
// workload.
func TestPeerMetadataHeadersOnlyWhereTheConnectionDidNotCarryIt(t *testing.T) {
	ctx := testutil.Context(t)
	ca, err := identitytest.NewCA("cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	source := func(id string) transport.ProviderMap {
		svid, err := ca.Issue(id, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		return transport.ProviderMap{"default": identity.NewStaticSource(svid, ca.Bundle())}
	}
	_, clientValue, err := telemetry.PeerMetadata(checkout)
	if err != nil {
		t.Fatal(err)
	}
	_, serverValue, err := telemetry.PeerMetadata(payments)
	if err != nil {
		t.Fatal(err)
	}
	chain := &xdsclient.FilterChain{Name: "strict", TLS: &xdsclient.DownstreamTLS{
		Identity:                 xdsclient.CertificateRef{Provider: "default"},
		Roots:                    &xdsclient.CertificateRef{Provider: "default"},
		RequireClientCertificate: true,
	}}
	strict := func(net.Conn, string) (*xdsclient.FilterChain, error) { return chain, nil }

	// server starts a payments server, exchanging or not, and counts the
	// calls that carried the client's metadata in a header.
	type server struct {
		addr            string
		calls, withMeta atomic.Int64
		reader          *sdkmetric.ManualReader
	}
	startServer := func(exchange bool) *server {
		s := &server{}
		var opts []transport.ServerOption
		if exchange {
			opts = append(opts, transport.WithPeerMetadata(serverValue))
		}
		creds := transport.NewServerCredentials(source(payments.Principal), strict, opts...)
		meter, reader := newMeter(t)
		s.reader = reader
		interceptor := telemetry.NewServerInterceptor(telemetry.WithWorkload(payments), telemetry.WithMeterProvider(meter),
			telemetry.WithPeerAuthMetadata(peerMetadataOf))
		srv := grpc.NewServer(append([]grpc.ServerOption{grpc.Creds(creds),
			grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
				s.calls.Add(1)
				if len(metadata.ValueFromIncomingContext(ctx, telemetry.HeaderPeerMetadata)) > 0 {
					s.withMeta.Add(1)
				}
				return h(ctx, req)
			}),
			grpc.ChainStreamInterceptor(func(srv any, ss grpc.ServerStream, _ *grpc.StreamServerInfo, h grpc.StreamHandler) error {
				s.calls.Add(1)
				if len(metadata.ValueFromIncomingContext(ss.Context(), telemetry.HeaderPeerMetadata)) > 0 {
					s.withMeta.Add(1)
				}
				return h(srv, ss)
			})}, interceptor.ServerOptions()...)...)
		healthpb.RegisterHealthServer(srv, &healthService{seen: make(chan observation, 1000)})
		s.addr = testutil.Start(t, srv)
		return s
	}
	exchanging, plain := startServer(true), startServer(false)

	// One client interceptor, as a mesh has, for both channels.
	clientMeter, clientReader := newMeter(t)
	client := telemetry.NewClientInterceptor(telemetry.WithWorkload(checkout), telemetry.WithMeterProvider(clientMeter),
		telemetry.WithPeerAuthMetadata(peerMetadataOf))
	creds := transport.NewClientCredentials(source(checkout.Principal), transport.WithPeerMetadata(clientValue))
	dial := func(addr string) healthpb.HealthClient {
		r := manual.NewBuilderWithScheme("exchangetest")
		r.InitialState(resolver.State{Addresses: []resolver.Address{handshake.Set(resolver.Address{Addr: addr}, &handshake.Info{
			Cluster: "outbound|8080||payments.shop.svc.cluster.local",
			TLS:     &xdsclient.UpstreamTLS{Identity: &xdsclient.CertificateRef{Provider: "default"}, Roots: xdsclient.CertificateRef{Provider: "default"}},
		})}})
		conn, err := grpc.NewClient(r.Scheme()+":///payments", append([]grpc.DialOption{grpc.WithResolvers(r), grpc.WithTransportCredentials(creds)},
			client.DialOptions()...)...)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		return healthpb.NewHealthClient(conn)
	}
	toExchanging, toPlain := dial(exchanging.addr), dial(plain.addr)
	const calls = 10
	for range calls {
		for _, c := range []healthpb.HealthClient{toExchanging, toPlain} {
			if _, err := c.Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
				t.Fatal(err)
			}
		}
	}
	// Streams learn from the connection too.
	for _, c := range []healthpb.HealthClient{toExchanging, toPlain} {
		watchToEnd(ctx, t, c, "")
	}
	const perServer = calls + 1
	// The first call to the exchanging server could not know yet.
	if got := exchanging.withMeta.Load(); got != 1 {
		t.Errorf("the exchanging server got the metadata in headers on %d of %d calls, want the first only", got, exchanging.calls.Load())
	}
	if got := plain.withMeta.Load(); got != perServer {
		t.Errorf("the server that does not exchange got the metadata in headers on %d of %d calls, want all", got, plain.calls.Load())
	}
	for name, s := range map[string]*server{"exchanging": exchanging, "plain": plain} {
		if got := requestsBy(t, s.reader, "source_workload"); got[checkout.Name] != perServer || len(got) != 1 {
			t.Errorf("%s server's requests by source_workload = %v, want %d of %s", name, got, perServer, checkout.Name)
		}
	}
	if got := requestsBy(t, clientReader, "destination_workload"); got[payments.Name] != 2*perServer || len(got) != 1 {
		t.Errorf("client's requests by destination_workload = %v, want %d of %s", got, 2*perServer, payments.Name)
	}
}

// requestsBy sums istio_requests_total by the value of label.
func requestsBy(t *testing.T, reader *sdkmetric.ManualReader, label string) map[string]int64 {
	t.Helper()
	out := map[string]int64{}
	for _, p := range requestCounts(t, collect(t, reader)) {
		out[labelMap(p.Attributes)[label]] += p.Value
	}
	return out
}
