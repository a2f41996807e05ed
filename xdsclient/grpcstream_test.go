package xdsclient

import (
	"context"
	"errors"
	"io"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	_ "google.golang.org/grpc/encoding/gzip" // the compressor the refusing test's server uses
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"mesh/internal/leakcheck"
	"mesh/internal/testutil"
	litediscoverypb "mesh/xdsclient/internal/lite/envoy/service/discovery/v3"
)

// The lean gRPC client of the ADS stream, against grpc-go's own server
// with an ADS handler registered, on 127.0.0.1 (or a unix socket).

// adsHandler is an ADS server whose SotW stream does what sotw says.
type adsHandler struct {
	discoverypb.UnimplementedAggregatedDiscoveryServiceServer
	sotw func(discoverypb.AggregatedDiscoveryService_StreamAggregatedResourcesServer) error
}

func (h *adsHandler) StreamAggregatedResources(s discoverypb.AggregatedDiscoveryService_StreamAggregatedResourcesServer) error {
	return h.sotw(s)
}

// echoOnce answers the first request with a response naming its type and
// then ends the stream with err.
func echoOnce(err error) func(discoverypb.AggregatedDiscoveryService_StreamAggregatedResourcesServer) error {
	return func(s discoverypb.AggregatedDiscoveryService_StreamAggregatedResourcesServer) error {
		req, rerr := s.Recv()
		if rerr != nil {
			return rerr
		}
		if serr := s.Send(&discoverypb.DiscoveryResponse{TypeUrl: req.GetTypeUrl(), VersionInfo: "1", Nonce: "n1"}); serr != nil {
			return serr
		}
		return err
	}
}

// serveADS starts a grpc-go server with h (none if nil) on lis and
// returns an adsServer for uri that reaches it over plaintext.
func serveADS(t *testing.T, lis net.Listener, uri string, h *adsHandler, opts ...grpc.ServerOption) *adsServer {
	t.Helper()
	s := grpc.NewServer(opts...)
	if h != nil {
		discoverypb.RegisterAggregatedDiscoveryServiceServer(s, h)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = s.Serve(lis)
	}()
	t.Cleanup(func() {
		s.Stop()
		<-done
	})
	srv, err := newADSServer(ServerConfig{URI: uri}, serverCreds{})
	if err != nil {
		t.Fatal(err)
	}
	return srv
}

func listenTCP(t *testing.T) net.Listener {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return lis
}

func newSotW() *litediscoverypb.DiscoveryResponse { return new(litediscoverypb.DiscoveryResponse) }

func openSotW(ctx context.Context, t *testing.T, srv *adsServer) *grpcStream[*litediscoverypb.DiscoveryRequest, *litediscoverypb.DiscoveryResponse] {
	t.Helper()
	s, err := openStream[*litediscoverypb.DiscoveryRequest](ctx, srv, sotwMethod, newSotW)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.close)
	return s
}

// sendAsync sends req while the caller receives: the first Send waits
// for the request to go out, which the first Recv starts.
func sendAsync(s adsStream[*litediscoverypb.DiscoveryRequest, *litediscoverypb.DiscoveryResponse], req *litediscoverypb.DiscoveryRequest) <-chan error {
	ch := make(chan error, 1)
	go func() { ch <- s.Send(req) }()
	return ch
}

const testTypeURL = "type.googleapis.com/envoy.config.listener.v3.Listener"

func TestGRPCStreamStatusFromTrailers(t *testing.T) {
	leakcheck.Check(t, "golang.org/x/net/http2.(*ClientConn)", "golang.org/x/net/http2.(*clientStream)", "mesh/xdsclient.")
	ctx := testutil.Context(t)
	var gotMD metadata.MD
	lis := listenTCP(t)
	srv := serveADS(t, lis, lis.Addr().String(), &adsHandler{sotw: func(s discoverypb.AggregatedDiscoveryService_StreamAggregatedResourcesServer) error {
		gotMD, _ = metadata.FromIncomingContext(s.Context())
		return echoOnce(status.Error(codes.PermissionDenied, "denied: 100% sure, naïvely"))(s)
	}})
	s := openSotW(ctx, t, srv)
	sent := sendAsync(s, &litediscoverypb.DiscoveryRequest{TypeUrl: testTypeURL, ResourceNames: []string{"a"}})
	resp, err := s.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetTypeUrl() != testTypeURL || resp.GetNonce() != "n1" {
		t.Fatalf("response = %v", resp)
	}
	if err := <-sent; err != nil {
		t.Fatal(err)
	}
	_, err = s.Recv()
	if st, _ := status.FromError(err); st.Code() != codes.PermissionDenied || st.Message() != "denied: 100% sure, naïvely" {
		t.Fatalf("Recv after the status = %v, want PermissionDenied with the server's message decoded", err)
	}
	if _, again := s.Recv(); again != err {
		t.Fatalf("Recv once ended = %v, want the same status again", again)
	}
	if got := gotMD.Get("grpc-encoding"); len(got) != 0 {
		t.Errorf("the request offered grpc-encoding %v, want none", got)
	}
	if got := gotMD.Get(":authority"); len(got) != 1 || got[0] != lis.Addr().String() {
		t.Errorf(":authority = %v, want %s", got, lis.Addr())
	}
}

func TestGRPCStreamOKStatusIsEOF(t *testing.T) {
	ctx := testutil.Context(t)
	lis := listenTCP(t)
	srv := serveADS(t, lis, lis.Addr().String(), &adsHandler{sotw: echoOnce(nil)})
	s := openSotW(ctx, t, srv)
	sendAsync(s, &litediscoverypb.DiscoveryRequest{TypeUrl: testTypeURL})
	if _, err := s.Recv(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Recv(); err != io.EOF {
		t.Fatalf("Recv after an OK status = %v, want io.EOF", err)
	}
}

// A handler that fails before sending anything makes grpc-go answer with
// a trailers-only response: the status is in the only HEADERS frame.
func TestGRPCStreamTrailersOnly(t *testing.T) {
	ctx := testutil.Context(t)
	lis := listenTCP(t)
	srv := serveADS(t, lis, lis.Addr().String(), &adsHandler{sotw: func(discoverypb.AggregatedDiscoveryService_StreamAggregatedResourcesServer) error {
		return status.Error(codes.Unauthenticated, "token does not verify")
	}})
	s := openSotW(ctx, t, srv)
	_, err := s.Recv()
	if st, _ := status.FromError(err); st.Code() != codes.Unauthenticated || st.Message() != "token does not verify" {
		t.Fatalf("Recv = %v, want Unauthenticated from a trailers-only response", err)
	}
	// The request body's writer stopped with the stream: Send fails.
	if err := s.Send(&litediscoverypb.DiscoveryRequest{TypeUrl: testTypeURL}); !errors.Is(err, io.EOF) {
		t.Fatalf("Send after the stream ended = %v, want io.EOF", err)
	}
}

// No encoding is offered, so a compressed message (here from a server
// that compresses whatever the client says) is refused by name.
func TestGRPCStreamRefusesCompressedMessage(t *testing.T) {
	ctx := testutil.Context(t)
	lis := listenTCP(t)
	//lint:ignore SA1019 the one way to make grpc-go compress unasked
	srv := serveADS(t, lis, lis.Addr().String(), &adsHandler{sotw: echoOnce(nil)}, grpc.RPCCompressor(grpc.NewGZIPCompressor())) //nolint:staticcheck
	s := openSotW(ctx, t, srv)
	sendAsync(s, &litediscoverypb.DiscoveryRequest{TypeUrl: testTypeURL})
	_, err := s.Recv()
	if st, _ := status.FromError(err); st.Code() != codes.Internal || !strings.Contains(st.Message(), `compressed message (grpc-encoding "gzip")`) {
		t.Fatalf("Recv = %v, want the compressed message refused, naming gzip", err)
	}
}

// A server that ages its connections out sends GOAWAY and closes: the
// stream fails Unavailable, and the next stream, on a new connection,
// works.
func TestGRPCStreamGoAwayThenReconnect(t *testing.T) {
	ctx := testutil.Context(t)
	lis := listenTCP(t)
	hold := func(s discoverypb.AggregatedDiscoveryService_StreamAggregatedResourcesServer) error {
		if err := echoOnce(nil)(s); err != nil {
			return err
		}
		<-s.Context().Done() // until the connection goes
		return nil
	}
	srv := serveADS(t, lis, lis.Addr().String(), &adsHandler{sotw: hold},
		grpc.KeepaliveParams(keepalive.ServerParameters{MaxConnectionAge: 50 * time.Millisecond, MaxConnectionAgeGrace: 50 * time.Millisecond}))
	for i := range 2 {
		s := openSotW(ctx, t, srv)
		sendAsync(s, &litediscoverypb.DiscoveryRequest{TypeUrl: testTypeURL})
		if _, err := s.Recv(); err != nil {
			t.Fatalf("stream %d: %v", i, err)
		}
		_, err := s.Recv()
		if st, _ := status.FromError(err); st.Code() != codes.Unavailable {
			t.Fatalf("stream %d once the server aged the connection out: %v, want Unavailable", i, err)
		}
		t.Logf("stream %d: %v", i, err)
	}
}

// Close (the stream's context ending) stops the connection's read loop
// and the request body's writer, even with a Recv and a Send waiting.
func TestGRPCStreamCloseLeavesNoGoroutine(t *testing.T) {
	leakcheck.Check(t, "golang.org/x/net/http2.(*ClientConn)", "golang.org/x/net/http2.(*clientStream)", "mesh/xdsclient.")
	ctx, cancel := context.WithCancel(testutil.Context(t))
	defer cancel()
	lis := listenTCP(t)
	srv := serveADS(t, lis, lis.Addr().String(), &adsHandler{sotw: func(s discoverypb.AggregatedDiscoveryService_StreamAggregatedResourcesServer) error {
		<-s.Context().Done() // reads nothing, sends nothing
		return nil
	}})
	s, err := openStream[*litediscoverypb.DiscoveryRequest](ctx, srv, sotwMethod, newSotW)
	if err != nil {
		t.Fatal(err)
	}
	// Larger than the flow control windows, so Send blocks.
	big := &litediscoverypb.DiscoveryRequest{TypeUrl: testTypeURL, VersionInfo: strings.Repeat("x", 3<<20)}
	sent := sendAsync(s, big)
	recvd := make(chan error, 1)
	go func() {
		_, err := s.Recv()
		recvd <- err
	}()
	cancel()
	if err := <-recvd; status.Code(err) != codes.Canceled {
		t.Fatalf("Recv after cancel = %v, want Canceled", err)
	}
	if err := <-sent; err == nil {
		t.Fatal("Send after cancel succeeded")
	}
	s.close()
}

func TestADSServerReady(t *testing.T) {
	ctx := testutil.Context(t)
	lis := listenTCP(t)
	srv := serveADS(t, lis, lis.Addr().String(), &adsHandler{sotw: echoOnce(nil)})
	if !srv.ready(ctx) {
		t.Fatal("ready = false with the server up")
	}
	closed := listenTCP(t)
	addr := closed.Addr().String()
	closed.Close()
	down, err := newADSServer(ServerConfig{URI: addr}, serverCreds{})
	if err != nil {
		t.Fatal(err)
	}
	if down.ready(ctx) {
		t.Fatal("ready = true with nothing listening")
	}
}

// istio-agent's bootstrap names a unix socket (unix:///etc/istio/proxy/XDS).
func TestGRPCStreamOverUnixSocket(t *testing.T) {
	ctx := testutil.Context(t)
	path := filepath.Join(t.TempDir(), "xds.sock")
	lis, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	srv := serveADS(t, lis, "unix://"+path, &adsHandler{sotw: echoOnce(nil)})
	s := openSotW(ctx, t, srv)
	sendAsync(s, &litediscoverypb.DiscoveryRequest{TypeUrl: testTypeURL})
	if _, err := s.Recv(); err != nil {
		t.Fatal(err)
	}
}

func TestNewADSServerTargets(t *testing.T) {
	for _, tc := range []struct {
		uri, network, addr, authority, host, wantErr string
	}{
		{uri: "127.0.0.1:15010", network: "tcp", addr: "127.0.0.1:15010", authority: "127.0.0.1:15010", host: "127.0.0.1"},
		{uri: "istiod.istio-system.svc:15012", network: "tcp", addr: "istiod.istio-system.svc:15012", authority: "istiod.istio-system.svc:15012", host: "istiod.istio-system.svc"},
		{uri: "dns:///xds.example:443", network: "tcp", addr: "xds.example:443", authority: "xds.example:443", host: "xds.example"},
		{uri: "passthrough:///10.0.0.1:9000", network: "tcp", addr: "10.0.0.1:9000", authority: "10.0.0.1:9000", host: "10.0.0.1"},
		{uri: "xds.example", network: "tcp", addr: "xds.example:443", authority: "xds.example:443", host: "xds.example"},
		{uri: "[::1]:15010", network: "tcp", addr: "[::1]:15010", authority: "[::1]:15010", host: "::1"},
		{uri: "unix:///etc/istio/proxy/XDS", network: "unix", addr: "/etc/istio/proxy/XDS", authority: "localhost", host: "localhost"},
		{uri: "unix:relative/sock", network: "unix", addr: "relative/sock", authority: "localhost", host: "localhost"},
		{uri: "unix-abstract:xds", network: "unix", addr: "@xds", authority: "localhost", host: "localhost"},
		{uri: "unix://host/path", wantErr: "names no host"},
		{uri: "dns://8.8.8.8/xds.example:443", wantErr: "DNS server in the target"},
		{uri: "dns:///", wantErr: "no host"},
		{uri: "unix:", wantErr: "no socket path"},
	} {
		t.Run(tc.uri, func(t *testing.T) {
			s, err := newADSServer(ServerConfig{URI: tc.uri}, serverCreds{})
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) || !strings.Contains(err.Error(), tc.uri) {
					t.Fatalf("err = %v, want one naming %q and saying %q", err, tc.uri, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if s.network != tc.network || s.addr != tc.addr || s.authority != tc.authority || s.host != tc.host {
				t.Fatalf("got %s %s authority %s host %s", s.network, s.addr, s.authority, s.host)
			}
		})
	}
}

// A gRPC server that serves no ADS answers Unimplemented, trailers-only.
func TestGRPCStreamServerWithoutADS(t *testing.T) {
	ctx := testutil.Context(t)
	lis := listenTCP(t)
	srv := serveADS(t, lis, lis.Addr().String(), nil)
	s := openSotW(ctx, t, srv)
	if _, err := s.Recv(); status.Code(err) != codes.Unimplemented {
		t.Fatalf("Recv = %v, want Unimplemented", err)
	}
}
