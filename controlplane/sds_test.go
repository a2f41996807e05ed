package controlplane_test

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"mesh/controlplane"
	"mesh/identity"
	"mesh/internal/handshake"
	"mesh/internal/testutil"
	"mesh/transport"
	"mesh/xdsclient"
)

// xdsFor returns a real xDS client for w, bootstrapped by cp.
func xdsFor(t *testing.T, cp *controlplane.Server, w controlplane.Workload) *xdsclient.Client {
	t.Helper()
	path, err := cp.WriteBootstrap(t.TempDir(), w)
	if err != nil {
		t.Fatal(err)
	}
	bs, err := xdsclient.LoadBootstrapFile(path)
	if err != nil {
		t.Fatal(err)
	}
	c, err := xdsclient.New(bs, xdsclient.WithLogger(slog.New(slog.DiscardHandler)),
		xdsclient.WithBackoff(func(int) time.Duration { return 5 * time.Millisecond }))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// first waits for the first good version of a watched resource.
func first[T any](ctx context.Context, t *testing.T, watch func(string, func(xdsclient.Event[T])) func(), name string) T {
	t.Helper()
	got := make(chan T, 1)
	cancel := watch(name, func(ev xdsclient.Event[T]) {
		if ev.Err == nil && !ev.NotFound {
			select {
			case got <- ev.Resource:
			default:
			}
		}
	})
	defer cancel()
	select {
	case v := <-got:
		return v
	case <-ctx.Done():
		t.Fatalf("%s never arrived", name)
	}
	var zero T
	return zero
}

// sdsProviders maps the SDS references of the decoded TLS settings to
// identity sources fed by those secrets, as the mesh facade does.
func sdsProviders(ctx context.Context, t *testing.T, c *xdsclient.Client, refs ...xdsclient.CertificateRef) (transport.ProviderMap, *identity.SDSSource) {
	t.Helper()
	for _, r := range refs {
		if !r.SDS {
			t.Fatalf("reference %+v is not an SDS secret", r)
		}
	}
	src, err := identity.NewSDSSource(ctx, c, refs[0].Certificate, refs[1].Certificate, identity.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = src.Close() })
	return transport.ProviderMap{refs[0].Provider: src, refs[1].Provider: src}, src
}

func peerCert(_ any, stream grpc.ServerStream) error {
	if err := stream.RecvMsg(&emptypb.Empty{}); err != nil {
		return err
	}
	p, _ := peer.FromContext(stream.Context())
	ai, _ := p.AuthInfo.(transport.AuthInfo)
	if ai.State == nil || len(ai.State.PeerCertificates) == 0 {
		return stream.SendMsg(wrapperspb.String("plaintext"))
	}
	return stream.SendMsg(wrapperspb.String(fmt.Sprintf("%s serial=%s", ai.PeerID, ai.State.PeerCertificates[0].SerialNumber)))
}

// TestSDSOnlyWorkloadsTalkMutualTLS runs two workloads whose TLS comes
// only from SDS secrets the control plane mints, and checks that a
// rotation reaches the next handshake.
func TestSDSOnlyWorkloadsTalkMutualTLS(t *testing.T) {
	ctx := testutil.Context(t)
	cp, err := controlplane.New(ctx, controlplane.WithLogger(slog.New(slog.DiscardHandler)),
		controlplane.WithSDS(true), controlplane.WithSDSRotation(20*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cp.Close() })

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := uint32(lis.Addr().(*net.TCPAddr).Port)
	serverXDS := xdsFor(t, cp, controlplane.Workload{Name: "payments-1", ServiceAccount: "payments", Service: "payments", Port: port, Address: lis.Addr().String()})
	clientXDS := xdsFor(t, cp, controlplane.Workload{Name: "checkout-1", ServiceAccount: "checkout"})

	// The server side: its inbound listener names SDS secrets only.
	inbound := first(ctx, t, serverXDS.WatchListener, controlplane.InboundListenerPrefix+lis.Addr().String())
	var tlsChain *xdsclient.FilterChain
	for i := range inbound.FilterChains {
		if fc := &inbound.FilterChains[i]; fc.TLS != nil {
			tlsChain = fc
		}
	}
	if tlsChain == nil || !tlsChain.TLS.Identity.SDS || tlsChain.TLS.Roots == nil || !tlsChain.TLS.Roots.SDS {
		t.Fatalf("inbound TLS = %+v, want SDS references", tlsChain)
	}
	// The server maps references to sources the way the mesh facade does:
	// one SDSProviders serves every "sds:<secret>" provider name.
	serverProviders := identity.NewSDSProviders(serverXDS, identity.WithLogger(slog.New(slog.DiscardHandler)))
	t.Cleanup(func() { _ = serverProviders.Close() })
	for _, ref := range []xdsclient.CertificateRef{tlsChain.TLS.Identity, *tlsChain.TLS.Roots} {
		if err := serverProviders.Ready(ctx, ref.Provider); err != nil {
			t.Fatal(err)
		}
	}
	chooser := func(_ net.Conn, protocol string) (*xdsclient.FilterChain, error) {
		for i := range inbound.FilterChains {
			if fc := &inbound.FilterChains[i]; fc.Match.TransportProtocol == "" || fc.Match.TransportProtocol == protocol {
				return fc, nil
			}
		}
		return nil, fmt.Errorf("no chain for %s", protocol)
	}
	srv := grpc.NewServer(grpc.Creds(transport.NewServerCredentials(serverProviders, chooser)), grpc.UnknownServiceHandler(peerCert))
	testutil.Serve(t, srv, lis)

	// The client side: the cluster to payments names SDS secrets only.
	clusterName := controlplane.ClusterName(port, "", "payments.default.svc.cluster.local")
	cl := first(ctx, t, clientXDS.WatchCluster, clusterName)
	if cl.TLS == nil || cl.TLS.Identity == nil || !cl.TLS.Identity.SDS || !cl.TLS.Roots.SDS ||
		cl.TLS.Identity.Certificate != controlplane.SecretDefault || cl.TLS.Roots.Certificate != controlplane.SecretRootCA {
		t.Fatalf("cluster TLS = %+v, want SDS references to %q and %q", cl.TLS, controlplane.SecretDefault, controlplane.SecretRootCA)
	}
	clientProviders, clientSrc := sdsProviders(ctx, t, clientXDS, *cl.TLS.Identity, cl.TLS.Roots)
	clientCreds := transport.NewClientCredentials(clientProviders)

	ask := func() string {
		t.Helper()
		r := manual.NewBuilderWithScheme("sdse2e")
		r.InitialState(resolver.State{Addresses: []resolver.Address{
			handshake.Set(resolver.Address{Addr: lis.Addr().String()}, &handshake.Info{Cluster: cl.Name, TLS: cl.TLS}),
		}})
		conn, err := grpc.NewClient(r.Scheme()+":///payments", grpc.WithResolvers(r), grpc.WithTransportCredentials(clientCreds))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		var out wrapperspb.StringValue
		if err := conn.Invoke(ctx, "/mesh.test.Peer/Cert", &emptypb.Empty{}, &out); err != nil {
			t.Fatalf("RPC over SDS mTLS: %v", err)
		}
		return out.GetValue()
	}
	got := ask()
	const checkout = "spiffe://cluster.local/ns/default/sa/checkout"
	if !strings.HasPrefix(got, checkout+" serial=") {
		t.Fatalf("server saw %q, want the checkout SVID", got)
	}

	// Rotation re-mints and pushes; the next handshake shows the new
	// certificate. Serials are random, so a new one never repeats the old.
	select {
	case <-clientSrc.Updated():
	case <-ctx.Done():
		t.Fatal("timed out waiting for a rotated secret")
	}
	if again := ask(); again == got || !strings.HasPrefix(again, checkout+" serial=") {
		t.Fatalf("after rotation server saw %q, first saw %q", again, got)
	}
}

func TestSDSRotationRejectsNegativeInterval(t *testing.T) {
	_, err := controlplane.New(testutil.Context(t), controlplane.WithSDSRotation(-time.Second))
	if err == nil || !strings.Contains(err.Error(), "sds rotation interval -1s: must not be negative") {
		t.Fatalf("New error = %v", err)
	}
}
