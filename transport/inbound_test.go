package transport_test

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"mesh/controlplane"
	"mesh/internal/handshake"
	"mesh/internal/testutil"
	"mesh/transport"
	"mesh/xdsclient"
)

// inboundSite is the embedded control plane, a listener of the payments
// workload, and an xDS client watching its inbound listener resource, as
// the mesh's servers have them.
type inboundSite struct {
	cp   *controlplane.Server
	lis  net.Listener
	name string // the inbound listener resource's
	xds  *xdsclient.Client
}

func newInboundSite(ctx context.Context, t *testing.T, policies string, opts ...xdsclient.Option) *inboundSite {
	t.Helper()
	cp, err := controlplane.New(ctx, controlplane.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cp.Close() })
	if policies != "" {
		if err := cp.Apply([]byte(policies)); err != nil {
			t.Fatal(err)
		}
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = lis.Close() })
	path, err := cp.WriteBootstrap(t.TempDir(), controlplane.Workload{
		Name: "payments-1", ServiceAccount: "payments", Service: "payments", Port: uint32(lis.Addr().(*net.TCPAddr).Port),
		Labels: map[string]string{"app": "payments"}, Address: lis.Addr().String(),
	})
	if err != nil {
		t.Fatal(err)
	}
	bs, err := xdsclient.LoadBootstrapFile(path)
	if err != nil {
		t.Fatal(err)
	}
	xc, err := xdsclient.New(bs, append([]xdsclient.Option{xdsclient.WithLogger(slog.New(slog.DiscardHandler))}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = xc.Close() })
	return &inboundSite{cp: cp, lis: lis, name: controlplane.InboundListenerPrefix + lis.Addr().String(), xds: xc}
}

func (s *inboundSite) providers(t *testing.T, sa string) transport.ProviderMap {
	return transport.ProviderMap{"default": meshSource(t, s.cp, sa)}
}

// upstream is what the balancer would attach to the site's address.
func (s *inboundSite) upstream() *handshake.Info {
	port := s.lis.Addr().(*net.TCPAddr).Port
	return &handshake.Info{Cluster: "outbound|" + strconv.Itoa(port) + "||payments.default.svc.cluster.local", TLS: &xdsclient.UpstreamTLS{
		Identity: ref("default", "default"), Roots: *ref("default", "ROOTCA"),
		SubjectAltNames: []xdsclient.StringMatcher{exact("spiffe://cluster.local/ns/default/sa/payments")},
	}}
}

func peerAuthentication(mode string) string {
	return "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: default}\nspec:\n  mtls: {mode: " + mode + "}\n"
}

// TestGRPCInboundDrainsPlaintextAfterStrict: a gRPC server whose
// connections GRPCInbound handles serves plaintext and mTLS clients under
// PERMISSIVE; once the control plane says STRICT, the plaintext
// connection's calls are refused and it is closed, while the mTLS
// connection carries on untouched.
func TestGRPCInboundDrainsPlaintextAfterStrict(t *testing.T) {
	ctx := testutil.Context(t)
	site := newInboundSite(ctx, t, peerAuthentication("PERMISSIVE"))
	in := transport.NewGRPCInbound(site.xds, site.providers(t, "payments"), quiet, transport.WithDrainPeriod(time.Millisecond))
	srv := grpc.NewServer(append(in.ServerOptions(), grpc.UnknownServiceHandler(whoami))...)
	closed := make(chan net.Addr, 64)
	testutil.Serve(t, srv, in.Listen(closeReporter{site.lis, closed}, site.name))

	addr := site.lis.Addr().String()
	mtls := dial(t, addr, site.upstream(), transport.NewClientCredentials(site.providers(t, "checkout")))
	plain := dial(t, addr, nil, transport.NewClientCredentials(nil))
	var mtlsPeer peer.Peer
	if got, err := call(ctx, mtls, grpc.Peer(&mtlsPeer)); err != nil || got[:len("auth=mesh-mtls")] != "auth=mesh-mtls" {
		t.Fatalf("mTLS client under PERMISSIVE: %q, %v", got, err)
	}
	var plainPeer peer.Peer
	if got, err := call(ctx, plain, grpc.Peer(&plainPeer)); err != nil || got != "auth=mesh-plaintext id= serial=none" {
		t.Fatalf("plaintext client under PERMISSIVE: %q, %v", got, err)
	}

	if err := site.cp.Apply([]byte(peerAuthentication("STRICT"))); err != nil {
		t.Fatal(err)
	}
	// Refused from the moment the resource arrives, then closed: every
	// later call fails, on this connection or a new plaintext one.
	for {
		_, err := call(ctx, plain)
		if err != nil {
			if c := status.Code(err); c != codes.PermissionDenied && c != codes.Unavailable {
				t.Fatalf("plaintext call after STRICT: %v, want PermissionDenied or Unavailable", err)
			}
			break
		}
		select {
		case <-ctx.Done():
			t.Fatal("the plaintext connection is still served under STRICT")
		case <-time.After(10 * time.Millisecond):
		}
	}
	// The server closes the connection itself, within the drain period.
	for done := false; !done; {
		select {
		case a := <-closed:
			done = a.String() == plainPeer.LocalAddr.String()
		case <-ctx.Done():
			t.Fatal("the plaintext connection was never closed")
		}
	}
	for range 5 {
		if _, err := call(ctx, plain); err == nil {
			t.Fatal("a plaintext call succeeded under STRICT")
		}
	}
	for range 5 {
		var p peer.Peer
		if _, err := call(ctx, mtls, grpc.Peer(&p)); err != nil {
			t.Fatalf("mTLS call after STRICT: %v", err)
		}
		if p.LocalAddr.String() != mtlsPeer.LocalAddr.String() {
			t.Fatalf("mTLS call went over a new connection %s, want the one from before STRICT %s", p.LocalAddr, mtlsPeer.LocalAddr)
		}
	}
}

// closeReporter is a listener whose connections report their remote
// address when the server closes them.
type closeReporter struct {
	net.Listener
	closed chan<- net.Addr
}

func (l closeReporter) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &reportingConn{Conn: c, closed: l.closed}, nil
}

type reportingConn struct {
	net.Conn
	closed chan<- net.Addr
	once   sync.Once
}

func (c *reportingConn) Close() error {
	c.once.Do(func() {
		select {
		case c.closed <- c.RemoteAddr():
		default:
		}
	})
	return c.Conn.Close()
}

// TestInboundRefusesConnectionsWithoutItsResource: a listener whose
// inbound listener resource the control plane does not have reports
// ErrListenerNotFound and closes every connection: fail closed.
func TestInboundRefusesConnectionsWithoutItsResource(t *testing.T) {
	ctx := testutil.Context(t)
	// The control plane never answers for an unknown name: the client
	// decides it does not exist after its resource timeout.
	site := newInboundSite(ctx, t, "", xdsclient.WithResourceTimeout(100*time.Millisecond))
	states := make(chan error, 4)
	in := transport.NewGRPCInbound(site.xds, site.providers(t, "payments"), quiet,
		transport.WithServingStateCallback(func(addr net.Addr, serving bool, err error) {
			if addr.String() != site.lis.Addr().String() {
				t.Errorf("serving state of %s, want %s", addr, site.lis.Addr())
			}
			if serving {
				err = nil
			} else if err == nil {
				err = errors.New("not serving without an error")
			}
			states <- err
		}))
	srv := grpc.NewServer(append(in.ServerOptions(), grpc.UnknownServiceHandler(whoami))...)
	testutil.Serve(t, srv, in.Listen(site.lis, site.name+"-unknown"))

	select {
	case err := <-states:
		if !errors.Is(err, transport.ErrListenerNotFound) {
			t.Fatalf("serving state: %v, want ErrListenerNotFound", err)
		}
	case <-ctx.Done():
		t.Fatal("no serving state reported")
	}
	conn := dial(t, site.lis.Addr().String(), nil, transport.NewClientCredentials(nil))
	for range 3 {
		if _, err := call(ctx, conn); status.Code(err) != codes.Unavailable {
			t.Fatalf("call to a listener without its resource: %v, want Unavailable", err)
		}
	}
}

// TestHTTPInboundAuthorizesOverMTLS: an http.Server wired to HTTPInbound
// handshakes mTLS clients (dialled with NewHTTPDialer, as the mesh's
// RoundTripper does), tells the handler who called, and refuses what the
// AuthorizationPolicy denies with 403.
func TestHTTPInboundAuthorizesOverMTLS(t *testing.T) {
	ctx := testutil.Context(t)
	site := newInboundSite(ctx, t, peerAuthentication("STRICT")+`---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-admin, namespace: default}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin"]}}]
`)
	in := transport.NewHTTPInbound(site.xds, site.providers(t, "payments"), quiet)
	srv := &http.Server{
		Handler: in.Handler(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			id, _ := transport.PeerID(r.Context())
			_, _ = io.WriteString(w, id.String())
		}), nil),
		ConnContext: in.ConnContext,
	}
	testutil.ServeHTTP(t, srv, in.Listen(site.lis, site.name))

	up := site.upstream()
	dial := transport.NewHTTPDialer(site.providers(t, "checkout"), quiet)
	client := &http.Client{Transport: &http.Transport{
		DialTLSContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			return dial(ctx, network, addr, up.Cluster, up.TLS)
		},
	}}
	t.Cleanup(client.CloseIdleConnections)
	get := func(path string) (int, string) {
		t.Helper()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+site.lis.Addr().String()+path, nil)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("GET %s: %v", path, err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body)
	}
	if code, body := get("/orders"); code != http.StatusOK || body != "spiffe://cluster.local/ns/default/sa/checkout" {
		t.Errorf("GET /orders: %d %q, want 200 and the caller's SPIFFE ID", code, body)
	}
	// "/./admin" is "/admin" once normalized, as the policy sees it.
	for _, p := range []string{"/admin", "/./admin"} {
		if code, _ := get(p); code != http.StatusForbidden {
			t.Errorf("GET %s: %d, want 403", p, code)
		}
	}
}
