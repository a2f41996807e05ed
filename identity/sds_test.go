package identity_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"mesh/identity"
	"mesh/identity/identitytest"
	"mesh/identity/internal/sourcetest"
	"mesh/internal/handshake"
	"mesh/internal/testutil"
	"mesh/transport"
	"mesh/xdsclient"
	"mesh/xdsclient/xdstest"
)

func svidPEM(t *testing.T, ca *identitytest.CA, id string) (svid *x509svid.SVID, chain, key []byte) {
	t.Helper()
	svid, err := ca.Issue(id, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	chain, key, err = svid.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	return svid, chain, key
}

// sdsNode serves one node's "default" and "ROOTCA" secrets from a real
// go-control-plane server and reads them with a real xDS client.
type sdsNode struct {
	srv    *xdstest.Server
	id     string
	client *xdsclient.Client
}

func newSDSNode(t *testing.T, srv *xdstest.Server, nodeID string) *sdsNode {
	t.Helper()
	c, err := xdsclient.New(srv.Bootstrap(nodeID), xdsclient.WithBackoff(func(int) time.Duration { return 5 * time.Millisecond }))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return &sdsNode{srv: srv, id: nodeID, client: c}
}

func (n *sdsNode) push(t *testing.T, ca *identitytest.CA, chain, key []byte) {
	t.Helper()
	n.srv.SetSnapshot(t, n.id, map[resource.Type][]types.Resource{resource.SecretType: {
		xdstest.CertificateSecret("default", chain, key),
		xdstest.SPIFFEBundleSecret("ROOTCA", map[string][]byte{ca.TrustDomain().Name(): ca.RootPEM()}),
	}})
}

// sdsRefs are TLS settings naming SDS secrets, as the xDS client decodes
// them from a TLS context with sds_secret_config.
func sdsRef(name string) *xdsclient.CertificateRef {
	return &xdsclient.CertificateRef{Provider: xdsclient.SDSProviderName(name), Certificate: name, SDS: true}
}

func peerSerial(_ any, stream grpc.ServerStream) error {
	if err := stream.RecvMsg(&emptypb.Empty{}); err != nil {
		return err
	}
	p, _ := peer.FromContext(stream.Context())
	ai, _ := p.AuthInfo.(transport.AuthInfo)
	if ai.State == nil || len(ai.State.PeerCertificates) == 0 {
		return stream.SendMsg(wrapperspb.String("none"))
	}
	return stream.SendMsg(wrapperspb.String(fmt.Sprintf("%s %s", ai.PeerID, ai.State.PeerCertificates[0].SerialNumber)))
}

func serve(t *testing.T, creds credentials.TransportCredentials) string {
	t.Helper()
	return testutil.Start(t, grpc.NewServer(grpc.Creds(creds), grpc.UnknownServiceHandler(peerSerial)))
}

// askPeer makes one RPC on a new connection, so a new handshake, and
// returns what the server saw of the client.
func askPeer(ctx context.Context, t *testing.T, addr string, creds credentials.TransportCredentials) string {
	t.Helper()
	r := manual.NewBuilderWithScheme("sdstest")
	r.InitialState(resolver.State{Addresses: []resolver.Address{handshake.Set(resolver.Address{Addr: addr}, &handshake.Info{
		Cluster: "outbound|8080||server.default.svc.cluster.local",
		TLS: &xdsclient.UpstreamTLS{Identity: sdsRef("default"), Roots: *sdsRef("ROOTCA"),
			SubjectAltNames: []xdsclient.StringMatcher{{Kind: xdsclient.MatchExact, Value: serverID}}},
	})}})
	conn, err := grpc.NewClient(r.Scheme()+":///server", grpc.WithResolvers(r), grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var out wrapperspb.StringValue
	if err := conn.Invoke(ctx, "/test.Peer/Serial", &emptypb.Empty{}, &out); err != nil {
		t.Fatalf("RPC over SDS mTLS: %v", err)
	}
	return out.GetValue()
}

func TestSDSSourceMutualTLSAndRotation(t *testing.T) {
	ctx := testutil.Context(t)
	ca := sourcetest.NewCA(t, testTD)
	srv := xdstest.NewServer(t)
	clientNode, serverNode := newSDSNode(t, srv, "client-node"), newSDSNode(t, srv, "server-node")
	first, chain, key := svidPEM(t, ca, clientID)
	clientNode.push(t, ca, chain, key)
	_, schain, skey := svidPEM(t, ca, serverID)
	serverNode.push(t, ca, schain, skey)

	warned := testutil.NewLogs(slog.LevelWarn)
	clientSrc, err := identity.NewSDSSource(ctx, clientNode.client, "default", "ROOTCA", identity.WithLogger(slog.New(warned)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = clientSrc.Close() })
	serverSrc, err := identity.NewSDSSource(ctx, serverNode.client, "default", "ROOTCA", identity.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = serverSrc.Close() })

	// Each side's TLS comes only from its SDS secrets.
	serverProviders := transport.ProviderMap{xdsclient.SDSProviderName("default"): serverSrc, xdsclient.SDSProviderName("ROOTCA"): serverSrc}
	fc := &xdsclient.FilterChain{Name: "inbound", TLS: &xdsclient.DownstreamTLS{Identity: *sdsRef("default"), Roots: sdsRef("ROOTCA"), RequireClientCertificate: true}}
	addr := serve(t, transport.NewServerCredentials(serverProviders, func(net.Conn, string) (*xdsclient.FilterChain, error) { return fc, nil }))
	clientCreds := transport.NewClientCredentials(transport.ProviderMap{xdsclient.SDSProviderName("default"): clientSrc, xdsclient.SDSProviderName("ROOTCA"): clientSrc})

	if got, want := askPeer(ctx, t, addr, clientCreds), clientID+" "+first.Certificates[0].SerialNumber.String(); got != want {
		t.Fatalf("server saw %q, want %q", got, want)
	}

	// A pushed secret changes the certificate of the next handshake.
	updated := clientSrc.Updated()
	second, chain2, key2 := svidPEM(t, ca, clientID)
	clientNode.push(t, ca, chain2, key2)
	select {
	case <-updated:
	case <-ctx.Done():
		t.Fatal("timed out waiting for the pushed secret")
	}
	if got, want := askPeer(ctx, t, addr, clientCreds), clientID+" "+second.Certificates[0].SerialNumber.String(); got != want {
		t.Fatalf("after the push server saw %q, want %q", got, want)
	}

	// A certificate secret that is not one is rejected; the last good stays.
	srv.SetSnapshot(t, clientNode.id, map[resource.Type][]types.Resource{resource.SecretType: {
		xdstest.SPIFFEBundleSecret("default", map[string][]byte{testTD: ca.RootPEM()}),
		xdstest.SPIFFEBundleSecret("ROOTCA", map[string][]byte{testTD: ca.RootPEM()}),
	}})
	select {
	case r := <-warned.Records():
		if msg := sourcetest.RecordError(r); !strings.Contains(msg, `sds secret "default": is not a tls_certificate secret`) {
			t.Fatalf("warning error = %q", msg)
		}
	case <-ctx.Done():
		t.Fatal("timed out waiting for the bad secret to be reported")
	}
	if got, want := askPeer(ctx, t, addr, clientCreds), clientID+" "+second.Certificates[0].SerialNumber.String(); got != want {
		t.Fatalf("after a bad push server saw %q, want the last good %q", got, want)
	}
}

// fakeWatcher hands the test each watch's callback, to deliver events the
// real control plane cannot be made to send on cue (deletions, errors).
type fakeWatcher struct {
	watched   chan string // each name as its watch starts
	mu        sync.Mutex
	fns       map[string]func(xdsclient.Event[*xdsclient.Secret])
	cancelled map[string]bool
}

func (w *fakeWatcher) WatchSecret(name string, fn func(xdsclient.Event[*xdsclient.Secret])) func() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.fns == nil {
		w.fns, w.cancelled = map[string]func(xdsclient.Event[*xdsclient.Secret]){}, map[string]bool{}
	}
	w.fns[name] = fn
	w.watched <- name
	return func() {
		w.mu.Lock()
		defer w.mu.Unlock()
		w.cancelled[name] = true
	}
}

func (w *fakeWatcher) send(name string, ev xdsclient.Event[*xdsclient.Secret]) {
	w.mu.Lock()
	fn := w.fns[name]
	w.mu.Unlock()
	fn(ev)
}

func TestSDSSourceKeepsLastGoodAndReportsWhy(t *testing.T) {
	ca := sourcetest.NewCA(t, testTD)
	svid, chain, key := svidPEM(t, ca, clientID)
	w := &fakeWatcher{watched: make(chan string, 4)}
	logs := &testutil.Buffer{}
	logger := slog.New(slog.NewTextHandler(logs, nil))

	// Before anything arrives, a bounded wait names the last problem.
	short, cancel := context.WithCancel(context.Background())
	go func() {
		// Deliver a bad secret, then give up on the wait.
		<-w.watched
		w.send("default", xdsclient.Event[*xdsclient.Secret]{Resource: &xdsclient.Secret{Name: "default", Validation: &xdsclient.ValidationSecret{TrustedCA: ca.RootPEM()}}})
		cancel()
	}()
	_, err := identity.NewSDSSource(short, w, "default", "", identity.WithLogger(logger))
	if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), `sds secret "default": is not a tls_certificate secret`) {
		t.Fatalf("NewSDSSource error = %v", err)
	}
	if !w.cancelled["default"] {
		t.Fatal("a failed NewSDSSource left its watch running")
	}

	w = &fakeWatcher{watched: make(chan string, 4)}
	go func() {
		<-w.watched
		w.send("default", xdsclient.Event[*xdsclient.Secret]{Resource: &xdsclient.Secret{Name: "default", Certificate: &xdsclient.TLSCertificate{ChainPEM: chain, KeyPEM: key}}})
	}()
	src, err := identity.NewSDSSource(testutil.Context(t), w, "default", "", identity.WithLogger(logger))
	if err != nil {
		t.Fatal(err)
	}
	got, err := src.GetX509SVID()
	if err != nil || got.Certificates[0].SerialNumber.Cmp(svid.Certificates[0].SerialNumber) != 0 {
		t.Fatalf("GetX509SVID = %v, %v", got, err)
	}
	if _, err := src.GetX509BundleForTrustDomain(spiffeid.RequireTrustDomainFromString(testTD)); err == nil || !strings.Contains(err.Error(), "identity only") {
		t.Fatalf("bundle of an identity-only source: %v", err)
	}
	_, otherKey := func() ([]byte, []byte) { _, c, k := svidPEM(t, ca, clientID); return c, k }()
	for _, ev := range []xdsclient.Event[*xdsclient.Secret]{
		{Err: errors.New("xds: resource rejected")},
		{NotFound: true},
		{Resource: &xdsclient.Secret{Name: "default", Certificate: &xdsclient.TLSCertificate{ChainPEM: chain, KeyPEM: otherKey}}},
	} {
		w.send("default", ev)
		if got, err := src.GetX509SVID(); err != nil || got.Certificates[0].SerialNumber.Cmp(svid.Certificates[0].SerialNumber) != 0 {
			t.Fatalf("after %+v: GetX509SVID = %v, %v; want the last good", ev, got, err)
		}
	}
	text := logs.String()
	if !strings.Contains(text, "does not exist") || !strings.Contains(text, "resource rejected") || strings.Contains(text, "PRIVATE KEY") {
		t.Fatalf("logs do not explain the rejections or leak a key:\n%s", text)
	}
	_ = src.Close()
	_ = src.Close()
	if _, err := src.GetX509SVID(); !errors.Is(err, identity.ErrClosed) {
		t.Fatalf("GetX509SVID after Close = %v", err)
	}
	select {
	case <-src.Updated():
	default:
		t.Fatal("Updated not closed by Close")
	}

	if _, err := identity.NewSDSSource(context.Background(), w, "", ""); err == nil {
		t.Fatal("NewSDSSource with no names succeeded")
	}
}

var _ transport.Providers = (*identity.SDSProviders)(nil)

// TestSDSProvidersServeReferencedSecrets uses SDSProviders as the whole
// transport.Providers of both ends, as the mesh facade does: each "sds:X"
// provider name starts a source for secret X in whatever role X plays.
func TestSDSProvidersServeReferencedSecrets(t *testing.T) {
	ctx := testutil.Context(t)
	ca := sourcetest.NewCA(t, testTD)
	srv := xdstest.NewServer(t)
	clientNode, serverNode := newSDSNode(t, srv, "client-node"), newSDSNode(t, srv, "server-node")
	first, chain, key := svidPEM(t, ca, clientID)
	clientNode.push(t, ca, chain, key)
	_, schain, skey := svidPEM(t, ca, serverID)
	serverNode.push(t, ca, schain, skey)

	quiet := identity.WithLogger(slog.New(slog.DiscardHandler))
	clientProviders := identity.NewSDSProviders(clientNode.client, quiet)
	t.Cleanup(func() { _ = clientProviders.Close() })
	serverProviders := identity.NewSDSProviders(serverNode.client, quiet)
	t.Cleanup(func() { _ = serverProviders.Close() })

	if _, ok := clientProviders.Provider("default"); ok {
		t.Fatal("a bootstrap provider name was taken for an SDS one")
	}
	for _, p := range []*identity.SDSProviders{clientProviders, serverProviders} {
		for _, name := range []string{xdsclient.SDSProviderName("default"), xdsclient.SDSProviderName("ROOTCA")} {
			if err := p.Ready(ctx, name); err != nil {
				t.Fatal(err)
			}
		}
	}
	roots, _ := clientProviders.Provider(xdsclient.SDSProviderName("ROOTCA"))
	if _, err := roots.GetX509SVID(); err == nil || !strings.Contains(err.Error(), `"ROOTCA" is a validation context, not a certificate`) {
		t.Fatalf("SVID of a roots secret: %v", err)
	}

	fc := &xdsclient.FilterChain{Name: "inbound", TLS: &xdsclient.DownstreamTLS{Identity: *sdsRef("default"), Roots: sdsRef("ROOTCA"), RequireClientCertificate: true}}
	addr := serve(t, transport.NewServerCredentials(serverProviders, func(net.Conn, string) (*xdsclient.FilterChain, error) { return fc, nil }))
	clientCreds := transport.NewClientCredentials(clientProviders)
	if got, want := askPeer(ctx, t, addr, clientCreds), clientID+" "+first.Certificates[0].SerialNumber.String(); got != want {
		t.Fatalf("server saw %q, want %q", got, want)
	}

	// A missing secret: Ready names the wait and gives up with ctx.
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	if err := clientProviders.Ready(short, xdsclient.SDSProviderName("absent")); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Ready of an absent secret = %v", err)
	}
	if err := clientProviders.Ready(ctx, "default"); err == nil {
		t.Fatal("Ready accepted a non-SDS provider name")
	}
	_ = clientProviders.Close()
	if _, ok := clientProviders.Provider(xdsclient.SDSProviderName("default")); ok {
		t.Fatal("Provider after Close")
	}
}
