package transport_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/resolver"
	"google.golang.org/grpc/resolver/manual"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"mesh/identity"
	"mesh/identity/identitytest"
	"mesh/internal/handshake"
	"mesh/internal/leakcheck"
	"mesh/internal/testutil"
	"mesh/transport"
	"mesh/xdsclient"
)

const (
	trustDomain = "example.org"
	clientID    = "spiffe://example.org/ns/default/sa/checkout"
	serverID    = "spiffe://example.org/ns/default/sa/payments"
	clusterName = "outbound|8080||payments.default.svc.cluster.local"
	whoamiPath  = "/mesh.test.Whoami/Get"
)

// quiet keeps expected handshake failures out of the test output.
var quiet = transport.WithLogger(slog.New(slog.DiscardHandler))

func newCA(t *testing.T, td string) *identitytest.CA {
	t.Helper()
	ca, err := identitytest.NewCA(td)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

func issue(t *testing.T, ca *identitytest.CA, id string, dnsNames ...string) *x509svid.SVID {
	t.Helper()
	svid, err := ca.Issue(id, time.Hour, dnsNames...)
	if err != nil {
		t.Fatal(err)
	}
	return svid
}

// whoami answers every RPC with what the server knows of its peer.
func whoami(_ any, stream grpc.ServerStream) error {
	if err := stream.RecvMsg(&emptypb.Empty{}); err != nil {
		return err
	}
	p, ok := peer.FromContext(stream.Context())
	if !ok {
		return status.Error(codes.Internal, "no peer")
	}
	ai, ok := p.AuthInfo.(transport.AuthInfo)
	if !ok {
		return status.Errorf(codes.Internal, "auth info %T", p.AuthInfo)
	}
	id, _ := transport.PeerID(stream.Context())
	serial := "none"
	if ai.State != nil && len(ai.State.PeerCertificates) > 0 {
		serial = ai.State.PeerCertificates[0].SerialNumber.String()
	}
	return stream.SendMsg(wrapperspb.String(fmt.Sprintf("auth=%s id=%s serial=%s", ai.AuthType(), id, serial)))
}

func startServer(t *testing.T, creds credentials.TransportCredentials) string {
	t.Helper()
	return testutil.Start(t, grpc.NewServer(grpc.Creds(creds), grpc.UnknownServiceHandler(whoami)))
}

// startLoggedServer is startServer with mesh server credentials whose
// warnings go to the returned Logs, which nextError reads.
func startLoggedServer(t *testing.T, providers transport.Providers, chooser transport.Chooser, opts ...transport.ServerOption) (string, *testutil.Logs) {
	t.Helper()
	logs := testutil.NewLogs(slog.LevelWarn)
	opts = append(opts, transport.WithLogger(slog.New(logs)))
	return startServer(t, transport.NewServerCredentials(providers, chooser, opts...)), logs
}

// nextError returns the "error" attribute of the next warning in logs.
func nextError(ctx context.Context, t *testing.T, logs *testutil.Logs) string {
	t.Helper()
	return testutil.Attr(logs.Next(ctx, t), "error")
}

// dial connects through a manual resolver whose address carries info, as
// the balancer does for xDS clusters.
func dial(t *testing.T, addr string, info *handshake.Info, creds credentials.TransportCredentials) *grpc.ClientConn {
	t.Helper()
	r := manual.NewBuilderWithScheme("meshtest")
	a := resolver.Address{Addr: addr}
	if info != nil {
		a = handshake.Set(a, info)
	}
	r.InitialState(resolver.State{Addresses: []resolver.Address{a}})
	conn, err := grpc.NewClient(r.Scheme()+":///payments", grpc.WithResolvers(r), grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return conn
}

func call(ctx context.Context, conn *grpc.ClientConn, opts ...grpc.CallOption) (string, error) {
	var out wrapperspb.StringValue
	if err := conn.Invoke(ctx, whoamiPath, &emptypb.Empty{}, &out, opts...); err != nil {
		return "", err
	}
	return out.GetValue(), nil
}

func ref(provider, cert string) *xdsclient.CertificateRef {
	return &xdsclient.CertificateRef{Provider: provider, Certificate: cert}
}

// strict is a chooser for istio's STRICT mTLS.
func strict() transport.Chooser {
	return chain(&xdsclient.DownstreamTLS{
		Identity:                 *ref("default", "default"),
		Roots:                    ref("default", "ROOTCA"),
		RequireClientCertificate: true,
	})
}

// chain is a chooser that serves every connection with one filter chain
// with the given TLS settings (nil: plaintext).
func chain(settings *xdsclient.DownstreamTLS) transport.Chooser {
	fc := &xdsclient.FilterChain{Name: "test", TLS: settings}
	return func(net.Conn, string) (*xdsclient.FilterChain, error) { return fc, nil }
}

func mtlsInfo(sans ...xdsclient.StringMatcher) *handshake.Info {
	return &handshake.Info{Cluster: clusterName, TLS: &xdsclient.UpstreamTLS{
		Identity:        ref("default", "default"),
		Roots:           *ref("default", "ROOTCA"),
		SubjectAltNames: sans,
	}}
}

func exact(s string) xdsclient.StringMatcher {
	return xdsclient.StringMatcher{Kind: xdsclient.MatchExact, Value: s}
}

func wantRPCError(t *testing.T, err error, parts ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("RPC succeeded, want an error containing %q", parts)
	}
	if code := status.Code(err); code != codes.Unavailable {
		t.Errorf("RPC error code = %v, want Unavailable (err: %v)", code, err)
	}
	for _, p := range parts {
		if !strings.Contains(err.Error(), p) {
			t.Errorf("RPC error %q does not contain %q", err, p)
		}
	}
}

// fixture is a client and a server identity from one CA.
type fixture struct {
	ca             *identitytest.CA
	client, server transport.ProviderMap
}

func newFixture(t *testing.T) fixture {
	t.Helper()
	ca := newCA(t, trustDomain)
	return fixture{
		ca:     ca,
		client: transport.ProviderMap{"default": identity.NewStaticSource(issue(t, ca, clientID), ca.Bundle())},
		server: transport.ProviderMap{"default": identity.NewStaticSource(issue(t, ca, serverID), ca.Bundle())},
	}
}

func TestMutualTLS(t *testing.T) {
	ctx := testutil.Context(t)
	f := newFixture(t)
	addr := startServer(t, transport.NewServerCredentials(f.server, strict(), quiet))
	conn := dial(t, addr, mtlsInfo(exact(serverID)), transport.NewClientCredentials(f.client))

	var p peer.Peer
	got, err := call(ctx, conn, grpc.Peer(&p))
	if err != nil {
		t.Fatal(err)
	}
	svid, _ := f.client["default"].GetX509SVID()
	want := fmt.Sprintf("auth=mesh-mtls id=%s serial=%s", clientID, svid.Certificates[0].SerialNumber)
	if got != want {
		t.Errorf("server saw %q, want %q", got, want)
	}

	// The client side knows whom it reached.
	id, ok := transport.PeerID(peer.NewContext(ctx, &p))
	if !ok || id.String() != serverID {
		t.Errorf("client PeerID = %v, %v; want %s", id, ok, serverID)
	}
	ai, ok := p.AuthInfo.(transport.AuthInfo)
	if !ok {
		t.Fatalf("client AuthInfo is %T", p.AuthInfo)
	}
	if ai.State == nil || ai.State.NegotiatedProtocol != "h2" {
		t.Errorf("negotiated ALPN = %v, want h2", ai.State)
	}
	if ai.SecurityLevel != credentials.PrivacyAndIntegrity {
		t.Errorf("security level = %v, want PrivacyAndIntegrity", ai.SecurityLevel)
	}
}

func TestPlaintextBothSides(t *testing.T) {
	ctx := testutil.Context(t)
	f := newFixture(t)
	plaintext := chain(nil)
	addr := startServer(t, transport.NewServerCredentials(f.server, plaintext, quiet))
	// No handshake.Info and an Info without TLS both mean plaintext.
	for _, info := range []*handshake.Info{nil, {Cluster: clusterName}} {
		var p peer.Peer
		got, err := call(ctx, dial(t, addr, info, transport.NewClientCredentials(f.client)), grpc.Peer(&p))
		if err != nil {
			t.Fatal(err)
		}
		if want := "auth=mesh-plaintext id= serial=none"; got != want {
			t.Errorf("server saw %q, want %q", got, want)
		}
		if ai := p.AuthInfo.(transport.AuthInfo); ai.SecurityLevel != credentials.NoSecurity || ai.State != nil {
			t.Errorf("client auth info = %+v, want plaintext", ai)
		}
		if _, ok := transport.PeerID(peer.NewContext(ctx, &p)); ok {
			t.Error("PeerID reported an identity on a plaintext connection")
		}
	}
}

func TestStrictServerRejectsPlaintextClient(t *testing.T) {
	ctx := testutil.Context(t)
	f := newFixture(t)
	addr, logs := startLoggedServer(t, f.server, strict())

	_, err := call(ctx, dial(t, addr, nil, transport.NewClientCredentials(f.client)))
	if err == nil {
		t.Fatal("plaintext RPC to a STRICT server succeeded")
	}
	if msg := nextError(ctx, t, logs); !strings.Contains(msg, "plaintext client, but filter chain \"test\" requires TLS") {
		t.Errorf("server error = %q, want a TLS handshake failure", msg)
	}
}

func TestStrictServerRejectsClientWithoutCertificate(t *testing.T) {
	ctx := testutil.Context(t)
	f := newFixture(t)
	addr, logs := startLoggedServer(t, f.server, strict())
	info := mtlsInfo()
	info.TLS.Identity = nil // plain TLS: verify the server, present nothing

	_, err := call(ctx, dial(t, addr, info, transport.NewClientCredentials(f.client)))
	// Under TLS 1.3 the client finishes its handshake before the server
	// checks the client certificate, so only the server can explain.
	if err == nil {
		t.Fatal("RPC without a client certificate succeeded")
	}
	if msg := nextError(ctx, t, logs); !strings.Contains(msg, "certificate") {
		t.Errorf("server error = %q, want a missing client certificate", msg)
	}
}

func TestOptionalClientCertificate(t *testing.T) {
	ctx := testutil.Context(t)
	f := newFixture(t)
	permissive := &xdsclient.DownstreamTLS{Identity: *ref("default", "default"), Roots: ref("default", "ROOTCA")}
	addr := startServer(t, transport.NewServerCredentials(f.server,
		chain(permissive)))

	withoutCert := mtlsInfo()
	withoutCert.TLS.Identity = nil
	got, err := call(ctx, dial(t, addr, withoutCert, transport.NewClientCredentials(f.client)))
	if err != nil {
		t.Fatal(err)
	}
	if want := "auth=mesh-mtls id= serial=none"; got != want {
		t.Errorf("server saw %q, want %q", got, want)
	}
	got, err = call(ctx, dial(t, addr, mtlsInfo(), transport.NewClientCredentials(f.client)))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(got, "id="+clientID) {
		t.Errorf("server saw %q, want id=%s", got, clientID)
	}
}

func TestSubjectAltNameMismatch(t *testing.T) {
	ctx := testutil.Context(t)
	f := newFixture(t)
	addr := startServer(t, transport.NewServerCredentials(f.server, strict(), quiet))
	other := "spiffe://example.org/ns/default/sa/ledger"
	conn := dial(t, addr, mtlsInfo(exact(other)), transport.NewClientCredentials(f.client))

	_, err := call(ctx, conn)
	wantRPCError(t, err, clusterName, "server identity "+serverID+" not allowed", "want one of [exact", other, "127.0.0.1:")
}

func TestSubjectAltNameMatchers(t *testing.T) {
	ctx := testutil.Context(t)
	ca := newCA(t, trustDomain)
	server := transport.ProviderMap{"default": identity.NewStaticSource(
		issue(t, ca, serverID, "*.payments.svc", "payments.default.svc"), ca.Bundle())}
	client := transport.ProviderMap{"default": identity.NewStaticSource(issue(t, ca, clientID), ca.Bundle())}
	addr := startServer(t, transport.NewServerCredentials(server, strict(), quiet))

	tests := []struct {
		name string
		sans []xdsclient.StringMatcher
		ok   bool
	}{
		{"none means any verified identity", nil, true},
		{"exact URI", []xdsclient.StringMatcher{exact(serverID)}, true},
		{"second of several", []xdsclient.StringMatcher{exact("spiffe://example.org/x"), exact(serverID)}, true},
		{"prefix URI", []xdsclient.StringMatcher{{Kind: xdsclient.MatchPrefix, Value: "spiffe://example.org/ns/default/"}}, true},
		{"exact DNS", []xdsclient.StringMatcher{exact("payments.default.svc")}, true},
		{"DNS wildcard", []xdsclient.StringMatcher{exact("v2.payments.svc")}, true},
		{"DNS wildcard covers one label only", []xdsclient.StringMatcher{exact("a.v2.payments.svc")}, false},
		{"ignore case", []xdsclient.StringMatcher{{Kind: xdsclient.MatchExact, Value: strings.ToUpper(serverID), IgnoreCase: true}}, true},
		{"case matters by default", []xdsclient.StringMatcher{exact(strings.ToUpper(serverID))}, false},
		{"suffix mismatch", []xdsclient.StringMatcher{{Kind: xdsclient.MatchSuffix, Value: "/sa/ledger"}}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := call(ctx, dial(t, addr, mtlsInfo(tt.sans...), transport.NewClientCredentials(client)))
			if tt.ok && err != nil {
				t.Fatalf("RPC failed: %v", err)
			}
			if !tt.ok {
				wantRPCError(t, err, "not allowed")
			}
		})
	}
}

func TestForeignTrustDomainRefused(t *testing.T) {
	ctx := testutil.Context(t)
	f := newFixture(t)
	foreign := newCA(t, "other.org")
	foreignProviders := transport.ProviderMap{"default": identity.NewStaticSource(
		issue(t, foreign, "spiffe://other.org/ns/default/sa/payments"), foreign.Bundle())}

	t.Run("server from another trust domain", func(t *testing.T) {
		addr := startServer(t, transport.NewServerCredentials(foreignProviders, strict(), quiet))
		_, err := call(ctx, dial(t, addr, mtlsInfo(), transport.NewClientCredentials(f.client)))
		wantRPCError(t, err, clusterName, "cannot verify server certificate", "no bundle for trust domain", "other.org")
	})
	t.Run("client from another trust domain", func(t *testing.T) {
		addr, logs := startLoggedServer(t, f.server, strict())
		// The foreign client trusts example.org, so only the server can object.
		client := transport.ProviderMap{
			"default": identity.NewStaticSource(issue(t, foreign, "spiffe://other.org/ns/default/sa/checkout"), nil),
			"roots":   identity.NewStaticSource(nil, f.ca.Bundle()),
		}
		info := mtlsInfo()
		info.TLS.Roots = *ref("roots", "ROOTCA")
		_, err := call(ctx, dial(t, addr, info, transport.NewClientCredentials(client)))
		if err == nil {
			t.Fatal("RPC from a foreign trust domain succeeded")
		}
		if msg := nextError(ctx, t, logs); !strings.Contains(msg, "cannot verify client certificate") ||
			!strings.Contains(msg, `no bundle for trust domain "other.org"`) {
			t.Errorf("server error = %q, want foreign trust domain refused", msg)
		}
	})
	t.Run("same name, different CA", func(t *testing.T) {
		impostorCA := newCA(t, trustDomain)
		impostor := transport.ProviderMap{"default": identity.NewStaticSource(issue(t, impostorCA, serverID), impostorCA.Bundle())}
		addr := startServer(t, transport.NewServerCredentials(impostor, strict(), quiet))
		_, err := call(ctx, dial(t, addr, mtlsInfo(exact(serverID)), transport.NewClientCredentials(f.client)))
		wantRPCError(t, err, clusterName, "cannot verify server certificate")
	})
}

func TestMisconfiguration(t *testing.T) {
	ctx := testutil.Context(t)
	f := newFixture(t)

	t.Run("client names a missing provider", func(t *testing.T) {
		addr := startServer(t, transport.NewServerCredentials(f.server, strict(), quiet))
		info := mtlsInfo()
		info.TLS.Roots = *ref("nope", "ROOTCA")
		_, err := call(ctx, dial(t, addr, info, transport.NewClientCredentials(f.client)))
		wantRPCError(t, err, clusterName, "roots certificate provider", "nope", "not found")
	})
	t.Run("chooser error rejects", func(t *testing.T) {
		reject := func(net.Conn, string) (*xdsclient.FilterChain, error) {
			return nil, errors.New("no filter chain matches")
		}
		addr, logs := startLoggedServer(t, f.server, reject)
		if _, err := call(ctx, dial(t, addr, nil, transport.NewClientCredentials(f.client))); err == nil {
			t.Fatal("RPC succeeded on a rejected connection")
		}
		if msg := nextError(ctx, t, logs); !strings.Contains(msg, "rejected: no filter chain matches") {
			t.Errorf("server error = %q", msg)
		}
	})
	t.Run("require client certificate without roots", func(t *testing.T) {
		bad := &xdsclient.DownstreamTLS{Identity: *ref("default", ""), RequireClientCertificate: true}
		addr, logs := startLoggedServer(t, f.server, chain(bad))
		if _, err := call(ctx, dial(t, addr, mtlsInfo(), transport.NewClientCredentials(f.client))); err == nil {
			t.Fatal("RPC succeeded")
		}
		if msg := nextError(ctx, t, logs); !strings.Contains(msg, "name no roots") {
			t.Errorf("server error = %q", msg)
		}
	})
}

// TestFileSourceRotation checks that a rotated SVID is presented from the
// next handshake on, and that a bad replacement keeps the last good one.
func TestFileSourceRotation(t *testing.T) {
	ctx := testutil.Context(t)
	f := newFixture(t)
	addr := startServer(t, transport.NewServerCredentials(f.server, strict(), quiet))

	dir := t.TempDir()
	first := issue(t, f.ca, clientID)
	cfg, err := f.ca.WriteFiles(dir, first)
	if err != nil {
		t.Fatal(err)
	}
	cfg.RefreshInterval = 2 * time.Millisecond
	identityLogs := testutil.NewLogs(slog.LevelWarn)
	src, err := identity.NewFileSource(ctx, cfg, identity.WithLogger(slog.New(identityLogs)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = src.Close() })
	creds := transport.NewClientCredentials(transport.ProviderMap{"default": src})

	serialSeen := func() string {
		t.Helper()
		// A new ClientConn means a new handshake.
		got, err := call(ctx, dial(t, addr, mtlsInfo(exact(serverID)), creds))
		if err != nil {
			t.Fatal(err)
		}
		_, serial, _ := strings.Cut(got, "serial=")
		return serial
	}
	if got, want := serialSeen(), first.Certificates[0].SerialNumber.String(); got != want {
		t.Fatalf("server saw serial %s, want %s", got, want)
	}

	updated := src.Updated()
	second := issue(t, f.ca, clientID)
	if _, err := f.ca.WriteFiles(dir, second); err != nil {
		t.Fatal(err)
	}
	select {
	case <-updated:
	case <-ctx.Done():
		t.Fatal("timed out waiting for the rotated files to load")
	}
	// Drop warnings about a half-written set (new certificate, old key) that
	// the poller may have seen on the way.
	for len(identityLogs.Records()) > 0 {
		<-identityLogs.Records()
	}
	if got, want := serialSeen(), second.Certificates[0].SerialNumber.String(); got != want {
		t.Fatalf("after rotation server saw serial %s, want %s", got, want)
	}

	if err := identitytest.WriteFileAtomic(cfg.CertFile, []byte("not a certificate")); err != nil {
		t.Fatal(err)
	}
	if msg := nextError(ctx, t, identityLogs); !strings.Contains(msg, "cert-chain.pem: no PEM certificate") {
		t.Fatalf("identity error = %q, want cert-chain.pem named", msg)
	}
	if got, want := serialSeen(), second.Certificates[0].SerialNumber.String(); got != want {
		t.Fatalf("after a bad replacement server saw serial %s, want the last good %s", got, want)
	}
}

func TestCredentialsInfoAndClone(t *testing.T) {
	f := newFixture(t)
	client := transport.NewClientCredentials(f.client)
	if got := client.Info().SecurityProtocol; got != "tls" {
		t.Errorf("client SecurityProtocol = %q, want tls", got)
	}
	clone := client.Clone()
	if err := clone.OverrideServerName("payments.example"); err != nil {
		t.Fatal(err)
	}
	if got := clone.Info().ServerName; got != "payments.example" {
		t.Errorf("clone ServerName = %q", got)
	}
	if got := client.Info().ServerName; got != "" {
		t.Errorf("OverrideServerName on a clone changed the original: %q", got)
	}
	server := transport.NewServerCredentials(f.server, strict())
	if _, _, err := server.ClientHandshake(context.Background(), "x", nil); err == nil {
		t.Error("server credentials accepted ClientHandshake")
	}
	if _, _, err := client.ServerHandshake(nil); err == nil {
		t.Error("client credentials accepted ServerHandshake")
	}
}

func TestPeerIDWithoutPeer(t *testing.T) {
	if _, ok := transport.PeerID(context.Background()); ok {
		t.Error("PeerID found an identity in an empty context")
	}
}

// TestMain fails the run if any server, client, watcher or FileSource
// poller a test started outlives it.
func TestMain(m *testing.M) { leakcheck.Main(m, "mesh/", "google.golang.org/grpc") }

// TestCallerLogsHandshakeFailuresOncePerClusterAndCause: a caller whose
// handshakes fail (the server's certificate is from a CA it does not trust,
// as after a control plane restarted with a new CA) says why, once per
// cluster and cause, however often it redials.
func TestCallerLogsHandshakeFailuresOncePerClusterAndCause(t *testing.T) {
	ctx := testutil.Context(t)
	f := newFixture(t)
	restarted := newCA(t, trustDomain)
	server := transport.ProviderMap{"default": identity.NewStaticSource(issue(t, restarted, serverID), restarted.Bundle())}
	addr := startServer(t, transport.NewServerCredentials(server, strict(), quiet))
	sink := testutil.NewLogs(slog.LevelWarn)
	dial := transport.NewHTTPDialer(f.client, transport.WithLogger(slog.New(sink)))
	for _, cluster := range []string{clusterName, clusterName, clusterName, "outbound|8080|v2|payments.default.svc.cluster.local"} {
		info := mtlsInfo()
		info.Cluster = cluster
		conn, err := dial(ctx, "tcp", addr, info.Cluster, info.TLS)
		if err == nil {
			conn.Close()
			t.Fatal("handshake with a server from an untrusted CA succeeded")
		}
	}
	for _, cluster := range []string{clusterName, "outbound|8080|v2|payments.default.svc.cluster.local"} {
		select {
		case r := <-sink.Records():
			var got, cause string
			r.Attrs(func(a slog.Attr) bool {
				switch a.Key {
				case "cluster":
					got = a.Value.String()
				case "error":
					cause = a.Value.String()
				}
				return true
			})
			if got != cluster || !strings.Contains(cause, "cannot verify server certificate") {
				t.Errorf("warning for cluster %q: %q; want cluster %q and why the server was refused", got, cause, cluster)
			}
		default:
			t.Fatalf("no warning for cluster %s", cluster)
		}
	}
	select {
	case r := <-sink.Records():
		t.Errorf("a second warning for the same cluster and cause: %s", r.Message)
	default:
	}
}
