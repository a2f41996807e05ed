package mesh_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"

	"mesh"
	"mesh/controlplane"
	"mesh/internal/shop"
	"mesh/internal/testutil"
)

// plaintextConn is a gRPC client without the mesh: what an attacker (or a
// workload outside the mesh) uses under PERMISSIVE. Its connections report
// when the server closes them.
func plaintextConn(t *testing.T, addr net.Addr, closed chan<- net.Addr) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient(addr.String(),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(func(ctx context.Context, a string) (net.Conn, error) {
			return watchedDial(closed)(ctx, "tcp", a)
		}))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// watchedDial dials connections that report to closed (if not nil) when
// they are closed.
func watchedDial(closed chan<- net.Addr) func(ctx context.Context, network, addr string) (net.Conn, error) {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, network, addr)
		if err != nil || closed == nil {
			return c, err
		}
		return &watchedConn{Conn: c, closed: closed}, nil
	}
}

// watchedConn reports its local address once a read fails: the server
// closed the connection (or the client did).
type watchedConn struct {
	net.Conn
	closed chan<- net.Addr
	once   sync.Once
}

func (c *watchedConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if err != nil {
		c.once.Do(func() {
			select {
			case c.closed <- c.LocalAddr():
			default:
			}
		})
	}
	return n, err
}

// TestAttackMalformedGRPCPath: a :path that is not /service/method must be
// refused before authorization. Behind a server with an unknown-service
// handler (a gRPC proxy, a reflection-style catch-all), "//admin.Admin/x"
// otherwise runs the handler past a DENY policy on /admin.Admin/*.
func TestAttackMalformedGRPCPath(t *testing.T) {
	ctx := testutil.Context(t)
	s := startSite(ctx, t, nil, nil, areas())
	var mu sync.Mutex
	var reached []string
	srv := s.m.NewGRPCServer(grpc.UnknownServiceHandler(func(_ any, stream grpc.ServerStream) error {
		method, _ := grpc.MethodFromServerStream(stream)
		mu.Lock()
		reached = append(reached, method)
		mu.Unlock()
		return stream.SendMsg(&emptypb.Empty{})
	}))
	addr := shop.ServeGRPC(t, srv)
	if err := s.cp.Apply([]byte(webPolicy("DENY", `  - to:
    - operation:
        paths: ["/admin.Admin/*"]
`))); err != nil {
		t.Fatal(err)
	}
	conn := plaintextConn(t, addr, nil)
	call := func(method string) error {
		return conn.Invoke(ctx, method, &emptypb.Empty{}, &emptypb.Empty{})
	}
	for status.Code(call("/admin.Admin/Delete")) != codes.PermissionDenied {
		select {
		case <-ctx.Done():
			t.Fatal("the DENY policy never reached the server")
		case <-time.After(10 * time.Millisecond):
		}
	}
	if err := call("/other.Service/Get"); err != nil {
		t.Fatalf("a well-formed call the policy allows failed: %v", err)
	}
	mu.Lock()
	reached = nil
	mu.Unlock()
	for _, method := range []string{"//admin.Admin/Delete", "/admin.Admin/Delete/", "/./admin.Admin/Delete", "/admin.Admin//Delete",
		"/admin.Admin/%44elete", "/x/../admin.Admin/Delete", "/admin.Admin\\Delete/x"} {
		err := call(method)
		if status.Code(err) != codes.Unimplemented {
			t.Errorf("call to %q: %v, want Unimplemented (malformed method name)", method, err)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(reached) > 0 {
		t.Errorf("the handler ran for malformed paths %q", reached)
	}
}

// TestAttackPlaintextConnectionsAfterStrict: PERMISSIVE -> STRICT must
// reach plaintext connections already open (gRPC and HTTP): their new
// calls are refused and they are drained (GOAWAY, then closed), while the
// mesh's own mTLS connections, which STRICT still admits, are untouched.
func TestAttackPlaintextConnectionsAfterStrict(t *testing.T) {
	ctx := testutil.Context(t)
	w := shop.StartWorldWith(t, ctx, shop.WorldConfig{V1: 100}, shop.WorldOptions{
		Mesh: func(controlplane.Workload, string) []mesh.Option {
			return []mesh.Option{mesh.WithDrainPeriod(time.Second)}
		},
	})
	webAddr := shop.StartWeb(t, ctx, w.ControlPlane, "v1", mesh.WithDrainPeriod(time.Second))
	if err := w.ControlPlane.Apply([]byte(peerAuthentication("PERMISSIVE"))); err != nil {
		t.Fatal(err)
	}

	// The plaintext gRPC client is served under PERMISSIVE.
	closed := make(chan net.Addr, 16)
	plain := plaintextConn(t, w.Payments["v1"], closed)
	var plainPeer peer.Peer
	for {
		_, err := shop.Charge(ctx, plain)
		if err == nil {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("plaintext client never served under PERMISSIVE: %v", err)
		case <-time.After(10 * time.Millisecond):
		}
	}
	if err := plain.Invoke(ctx, shop.ChargeMethod, &emptypb.Empty{}, &emptypb.Empty{}, grpc.Peer(&plainPeer)); err != nil {
		t.Fatal(err)
	}
	// So is a plaintext HTTP/1.1 keep-alive connection.
	hc := dial(ctx, t, webAddr)
	defer hc.Close()
	br := bufio.NewReader(hc)
	keepAlive := func() (int, error) {
		if _, err := fmt.Fprintf(hc, "GET /version HTTP/1.1\r\nHost: web\r\n\r\n"); err != nil {
			return 0, err
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			return 0, err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		return resp.StatusCode, nil
	}
	if code, err := keepAlive(); code != http.StatusOK {
		t.Fatalf("plaintext HTTP under PERMISSIVE: %d %v", code, err)
	}
	// And a plaintext HTTP/2 connection (prior knowledge).
	h2closed := make(chan net.Addr, 16)
	var h2protocols http.Protocols
	h2protocols.SetUnencryptedHTTP2(true)
	h2 := &http.Client{Transport: &http.Transport{
		Protocols:   &h2protocols,
		DialContext: watchedDial(h2closed),
	}}
	defer h2.CloseIdleConnections()
	h2get := func() (int, error) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+webAddr.String()+"/version", nil)
		resp, err := h2.Do(req)
		if err != nil {
			return 0, err
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.ProtoMajor != 2 {
			t.Fatalf("plaintext HTTP/2 client answered over %s", resp.Proto)
		}
		return resp.StatusCode, nil
	}
	if code, err := h2get(); code != http.StatusOK {
		t.Fatalf("plaintext HTTP/2 under PERMISSIVE: %d %v", code, err)
	}
	// checkout's mTLS connection to payments, opened before the change.
	var meshPeer peer.Peer
	if err := w.Conn.Invoke(ctx, shop.ChargeMethod, &emptypb.Empty{}, &emptypb.Empty{}, grpc.Peer(&meshPeer)); err != nil {
		t.Fatal(err)
	}

	for len(closed) > 0 { // connections refused before PERMISSIVE was in force
		<-closed
	}
	// checkout's mTLS HTTP connection to web, opened before the change:
	// web answers /peer with the client address it sees.
	const webPeerURL = "http://web.default.svc.cluster.local:8080/peer"
	meshHTTPPeer := get(ctx, t, w.Checkout.HTTPClient(), webPeerURL, http.StatusOK)

	if err := w.ControlPlane.Apply([]byte(peerAuthentication("STRICT"))); err != nil {
		t.Fatal(err)
	}

	// The plaintext gRPC connection: refused, then closed by the server.
	for {
		err := plain.Invoke(ctx, shop.ChargeMethod, &emptypb.Empty{}, &emptypb.Empty{})
		if err != nil {
			t.Logf("plaintext gRPC call after STRICT: %v", err)
			break
		}
		select {
		case <-ctx.Done():
			t.Fatal("the plaintext gRPC connection is still served under STRICT")
		case <-time.After(10 * time.Millisecond):
		}
	}
	// The client may have redialled after the GOAWAY: connections opened
	// under STRICT are refused and closed too, possibly before the old
	// one ends its drain period.
	for done := false; !done; {
		select {
		case a := <-closed:
			done = a.String() == plainPeer.LocalAddr.String()
			if !done {
				t.Logf("connection %s, opened under STRICT, closed", a)
			}
		case <-ctx.Done():
			t.Fatal("the plaintext gRPC connection was never closed")
		}
	}
	for range 5 {
		if err := plain.Invoke(ctx, shop.ChargeMethod, &emptypb.Empty{}, &emptypb.Empty{}, grpc.WaitForReady(false)); err == nil {
			t.Fatal("a plaintext gRPC call succeeded under STRICT")
		}
	}

	// The plaintext HTTP connection: refused, then closed.
	for {
		code, err := keepAlive()
		if err != nil {
			t.Logf("plaintext HTTP connection after STRICT: %v", err)
			break
		}
		if code != http.StatusOK {
			t.Logf("plaintext HTTP request after STRICT: %d", code)
			if _, err := keepAlive(); err == nil {
				t.Fatal("the plaintext HTTP connection was kept after its refusal")
			}
			break
		}
		select {
		case <-ctx.Done():
			t.Fatal("the plaintext HTTP connection is still served under STRICT")
		case <-time.After(10 * time.Millisecond):
		}
	}

	// The plaintext HTTP/2 connection: refused, GOAWAY, closed.
	for {
		code, err := h2get()
		if err != nil || code != http.StatusOK {
			t.Logf("plaintext HTTP/2 request after STRICT: %d %v", code, err)
			break
		}
		select {
		case <-ctx.Done():
			t.Fatal("the plaintext HTTP/2 connection is still served under STRICT")
		case <-time.After(10 * time.Millisecond):
		}
	}
	select {
	case <-h2closed:
	case <-ctx.Done():
		t.Fatal("the plaintext HTTP/2 connection was never closed")
	}

	// checkout's mTLS connections still match: untouched.
	for range 20 {
		if got := get(ctx, t, w.Checkout.HTTPClient(), webPeerURL, http.StatusOK); got != meshHTTPPeer {
			t.Fatalf("mesh HTTP request after STRICT came from %s, want the connection from before STRICT %s", got, meshHTTPPeer)
		}
		var p peer.Peer
		if err := w.Conn.Invoke(ctx, shop.ChargeMethod, &emptypb.Empty{}, &emptypb.Empty{}, grpc.Peer(&p)); err != nil {
			t.Fatalf("mesh call after STRICT: %v", err)
		}
		if p.LocalAddr.String() != meshPeer.LocalAddr.String() {
			t.Fatalf("mesh call went over a new connection %s, want the one from before STRICT %s", p.LocalAddr, meshPeer.LocalAddr)
		}
	}
}

// TestAttackOversizedHeaders: requests with more than 60 KiB of headers are
// refused, over HTTP and gRPC, before any handler runs.
func TestAttackOversizedHeaders(t *testing.T) {
	ctx := testutil.Context(t)
	s := startSite(ctx, t, nil, nil, areas())
	big := strings.Repeat("a", 100<<10)

	if got := rawHTTP(ctx, t, s.addr, "GET", "/public/x", "X-Small: "+strings.Repeat("a", 30<<10)+"\r\n"); got.status != http.StatusOK {
		t.Fatalf("30 KiB of headers: %d, want 200", got.status)
	}
	if got := rawHTTP(ctx, t, s.addr, "GET", "/public/x", "X-Big: "+big+"\r\n"); got.status != http.StatusRequestHeaderFieldsTooLarge || got.seen != "" {
		t.Errorf("100 KiB of headers over HTTP/1.1: %d (handler saw %q), want 431", got.status, got.seen)
	}

	var mu sync.Mutex
	reached := 0
	srv := s.m.NewGRPCServer(grpc.UnknownServiceHandler(func(_ any, stream grpc.ServerStream) error {
		mu.Lock()
		reached++
		mu.Unlock()
		return stream.SendMsg(&emptypb.Empty{})
	}))
	conn := plaintextConn(t, shop.ServeGRPC(t, srv), nil)
	if err := conn.Invoke(ctx, "/any.Service/Call", &emptypb.Empty{}, &emptypb.Empty{}); err != nil {
		t.Fatalf("small call: %v", err)
	}
	for _, n := range []int{100 << 10, 1 << 20} {
		md := metadata.Pairs("x-big", strings.Repeat("a", n))
		err := conn.Invoke(metadata.NewOutgoingContext(ctx, md), "/any.Service/Call", &emptypb.Empty{}, &emptypb.Empty{})
		if err == nil {
			t.Errorf("a gRPC call with %d bytes of metadata was served", n)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if reached != 1 {
		t.Errorf("the handler ran %d times, want once (the small call)", reached)
	}
}

// TestAttackDrippedHeaders: a client that sends its headers a byte at a
// time does not hold a connection past the read header timeout. The drip
// is bounded by a count of bytes, far longer than the timeout.
func TestAttackDrippedHeaders(t *testing.T) {
	ctx := testutil.Context(t)
	s := startSite(ctx, t, nil, []mesh.Option{mesh.WithReadHeaderTimeout(300 * time.Millisecond)}, areas())
	conn := dial(ctx, t, s.addr)
	defer conn.Close()
	// One whole request first: the attack is on a keep-alive connection.
	br := bufio.NewReader(conn)
	if _, err := io.WriteString(conn, "GET /public/x HTTP/1.1\r\nHost: web\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if _, err := io.WriteString(conn, "GET /public/x HTTP/1.1\r\nHost: web\r\nX-Drip: "); err != nil {
		t.Fatal(err)
	}
	const drips = 2000 // at 20ms each, 40s: over a hundred times the timeout
	for i := range drips {
		if _, err := conn.Write([]byte{'a'}); err != nil {
			t.Logf("server closed the dripping connection after %d bytes: %v", i, err)
			return
		}
		// A closed connection shows on reads first.
		conn.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
		if _, err := br.ReadByte(); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Logf("server closed the dripping connection after %d bytes: %v", i, err)
			return
		}
		if ctx.Err() != nil {
			break
		}
	}
	t.Fatalf("the server held a connection dripping its headers for %d bytes", drips)
}

// TestHTTPServerSpeaksHTTP1OverMTLS: sidecars and most HTTP clients speak
// HTTP/1.1 over TLS (ALPN http/1.1); a mesh HTTP server serves them.
func TestHTTPServerSpeaksHTTP1OverMTLS(t *testing.T) {
	ctx := testutil.Context(t)
	w := shop.StartWorld(t, ctx, shop.WorldConfig{V1: 100})
	addr := shop.StartWeb(t, ctx, w.ControlPlane, "v1")
	dir := w.Dirs["checkout"]
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, "cert-chain.pem"), filepath.Join(dir, "key.pem"))
	if err != nil {
		t.Fatal(err)
	}
	rootPEM, err := os.ReadFile(filepath.Join(dir, "root-cert.pem"))
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(rootPEM)
	cfg := &tls.Config{
		Certificates: []tls.Certificate{cert},
		NextProtos:   []string{"http/1.1"},
		// SVIDs carry a SPIFFE ID, not a host name: verify the chain only.
		InsecureSkipVerify: true,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			leaf, err := x509.ParseCertificate(raw[0])
			if err != nil {
				return err
			}
			_, err = leaf.Verify(x509.VerifyOptions{Roots: roots})
			return err
		},
	}
	client := &http.Client{Transport: &http.Transport{TLSClientConfig: cfg, ForceAttemptHTTP2: false}}
	defer client.CloseIdleConnections()
	for {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "https://"+addr.String()+"/version", nil)
		resp, err := client.Do(req)
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				if resp.Proto != "HTTP/1.1" || resp.TLS == nil || resp.TLS.NegotiatedProtocol != "http/1.1" {
					t.Fatalf("answered over %s, ALPN %q", resp.Proto, resp.TLS.NegotiatedProtocol)
				}
				if string(body) != "v1" {
					t.Fatalf("body %q", body)
				}
				return
			}
			err = fmt.Errorf("status %d", resp.StatusCode)
		}
		select {
		case <-ctx.Done():
			t.Fatalf("HTTP/1.1 over mTLS never served: %v", err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// TestServersAnnounceEnvoyLikeLimits reads the HTTP/2 SETTINGS that mesh
// gRPC and HTTP servers send: a bound on concurrent streams per connection
// and on the size of a request's headers.
func TestServersAnnounceEnvoyLikeLimits(t *testing.T) {
	ctx := testutil.Context(t)
	s := startSite(ctx, t, nil, nil, areas())
	grpcAddr := shop.ServeGRPC(t, s.m.NewGRPCServer())
	if hs := s.m.NewHTTPServer(http.NotFoundHandler()).Server; hs.MaxHeaderBytes != mesh.DefaultMaxHeaderBytes ||
		hs.ReadHeaderTimeout != mesh.DefaultReadHeaderTimeout || hs.IdleTimeout != mesh.DefaultIdleTimeout {
		t.Errorf("HTTP server limits: MaxHeaderBytes %d, ReadHeaderTimeout %v, IdleTimeout %v", hs.MaxHeaderBytes, hs.ReadHeaderTimeout, hs.IdleTimeout)
	}
	for name, addr := range map[string]net.Addr{"gRPC": grpcAddr, "HTTP": s.addr} {
		settings := serverSettings(ctx, t, addr)
		if got := settings[http2.SettingMaxConcurrentStreams]; got != mesh.DefaultMaxConcurrentStreams {
			t.Errorf("%s server: SETTINGS_MAX_CONCURRENT_STREAMS %d, want %d", name, got, mesh.DefaultMaxConcurrentStreams)
		}
		// net/http adds a little slack to MaxHeaderBytes, as it does for
		// HTTP/1.1.
		if got := settings[http2.SettingMaxHeaderListSize]; got < mesh.DefaultMaxHeaderBytes || got > mesh.DefaultMaxHeaderBytes+8<<10 {
			t.Errorf("%s server: SETTINGS_MAX_HEADER_LIST_SIZE %d, want about %d", name, got, mesh.DefaultMaxHeaderBytes)
		}
	}
}

// serverSettings opens a plaintext HTTP/2 connection (prior knowledge) and
// returns the server's first SETTINGS.
func serverSettings(ctx context.Context, t *testing.T, addr net.Addr) map[http2.SettingID]uint32 {
	t.Helper()
	p, settings := h2Client(ctx, t, addr)
	p.conn.Close()
	return settings
}
