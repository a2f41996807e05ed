package transport_test

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/peer"

	"mesh/internal/testutil"
	"mesh/transport"
	"mesh/xdsclient"
)

// permissiveChains are istio's PERMISSIVE inbound chains: mTLS for TLS
// clients, plaintext for the rest.
func permissiveChains() []xdsclient.FilterChain {
	return []xdsclient.FilterChain{
		{
			Name:  "inbound-mtls",
			Match: xdsclient.FilterChainMatch{TransportProtocol: transport.ProtocolTLS},
			TLS: &xdsclient.DownstreamTLS{
				Identity:                 *ref("default", "default"),
				Roots:                    ref("default", "ROOTCA"),
				RequireClientCertificate: true,
			},
		},
		{Name: "inbound-plaintext", Match: xdsclient.FilterChainMatch{TransportProtocol: transport.ProtocolRawBuffer}},
	}
}

// byProtocol chooses among chains by their transport protocol match, as
// the mesh server's filter chain selection does.
func byProtocol(chains []xdsclient.FilterChain) transport.Chooser {
	return func(_ net.Conn, protocol string) (*xdsclient.FilterChain, error) {
		for i := range chains {
			if p := chains[i].Match.TransportProtocol; p == "" || p == protocol {
				return &chains[i], nil
			}
		}
		return nil, errors.New("no filter chain matches " + protocol)
	}
}

func TestDetectProtocol(t *testing.T) {
	for _, tc := range []struct {
		first []byte
		want  string
	}{
		{[]byte{0x16, 0x03, 0x01, 0x02, 0x00, 0x01}, transport.ProtocolTLS},
		{[]byte{0x16}, transport.ProtocolTLS},
		{[]byte{0x16, 0x02}, transport.ProtocolRawBuffer},
		{[]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), transport.ProtocolRawBuffer},
		{[]byte("GET / HTTP/1.1\r\n"), transport.ProtocolRawBuffer},
		{nil, transport.ProtocolRawBuffer},
	} {
		if got := transport.DetectProtocol(tc.first); got != tc.want {
			t.Errorf("DetectProtocol(% x) = %s, want %s", tc.first, got, tc.want)
		}
	}
}

func TestPermissiveServesTLSAndPlaintextOnOnePort(t *testing.T) {
	ctx := testutil.Context(t)
	f := newFixture(t)
	addr := startServer(t, transport.NewServerCredentials(f.server, byProtocol(permissiveChains()), quiet))
	clientCreds := transport.NewClientCredentials(f.client)

	got, err := call(ctx, dial(t, addr, mtlsInfo(exact(serverID)), clientCreds))
	if err != nil {
		t.Fatalf("mTLS client: %v", err)
	}
	if !strings.HasPrefix(got, "auth=mesh-mtls id="+clientID) {
		t.Errorf("mTLS client seen as %q", got)
	}

	got, err = call(ctx, dial(t, addr, nil, clientCreds))
	if err != nil {
		t.Fatalf("plaintext client: %v", err)
	}
	if got != "auth=mesh-plaintext id= serial=none" {
		t.Errorf("plaintext client seen as %q", got)
	}
}

func TestAuthInfoCarriesTheChosenFilterChain(t *testing.T) {
	ctx := testutil.Context(t)
	f := newFixture(t)
	chains := permissiveChains()
	seen := make(chan string, 2)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.Creds(transport.NewServerCredentials(f.server, byProtocol(chains), quiet)),
		grpc.UnknownServiceHandler(func(_ any, stream grpc.ServerStream) error {
			p, _ := peer.FromContext(stream.Context())
			ai := p.AuthInfo.(transport.AuthInfo)
			seen <- ai.FilterChain.Name
			return whoami(nil, stream)
		}))
	testutil.Serve(t, srv, lis)

	clientCreds := transport.NewClientCredentials(f.client)
	for _, tc := range []struct {
		name  string
		conn  *grpc.ClientConn
		chain string
	}{
		{"mtls", dial(t, lis.Addr().String(), mtlsInfo(), clientCreds), "inbound-mtls"},
		{"plaintext", dial(t, lis.Addr().String(), nil, clientCreds), "inbound-plaintext"},
	} {
		if _, err := call(ctx, tc.conn); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		if got := <-seen; got != tc.chain {
			t.Errorf("%s client served by chain %q, want %q", tc.name, got, tc.chain)
		}
	}
}

func TestTLSOnlyListenerRefusesPlaintextByProtocol(t *testing.T) {
	ctx := testutil.Context(t)
	f := newFixture(t)
	// Only the tls chain: a plaintext client matches nothing.
	addr, logs := startLoggedServer(t, f.server, byProtocol(permissiveChains()[:1]))
	if _, err := call(ctx, dial(t, addr, nil, transport.NewClientCredentials(f.client))); err == nil {
		t.Fatal("plaintext RPC succeeded against a TLS-only listener")
	}
	if msg := nextError(ctx, t, logs); !strings.Contains(msg, "no filter chain matches raw_buffer") {
		t.Errorf("server error = %q", msg)
	}
}

func TestSilentClientTimesOut(t *testing.T) {
	ctx := testutil.Context(t)
	f := newFixture(t)
	addr, logs := startLoggedServer(t, f.server, strict(), transport.WithSniffTimeout(50*time.Millisecond))
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	// Send nothing: the server must give up on its own.
	if msg := nextError(ctx, t, logs); !strings.Contains(msg, "client sent nothing") {
		t.Errorf("server error = %q", msg)
	}
	buf := make([]byte, 1)
	if err := conn.SetReadDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := conn.Read(buf); err == nil {
		t.Error("server kept the silent connection open")
	}
}

func TestDetectProtocolOfTLSAndHTTP2(t *testing.T) {
	var out strings.Builder
	fmt.Fprintln(&out, transport.DetectProtocol([]byte{0x16, 0x03, 0x01}))
	fmt.Fprintln(&out, transport.DetectProtocol([]byte("PRI * HTTP/2.0\r\n")))
	if got, want := out.String(), `tls
raw_buffer
`; got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
}
