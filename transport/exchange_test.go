package transport_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"fmt"
	"strings"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"mesh/internal/testutil"
	"mesh/transport"
)

const alpnExchange = "mesh-h2-peer-metadata"

// peerMetadata answers every RPC with the peer metadata and the ALPN
// protocol of the connection it came on.
func peerMetadata(_ any, stream grpc.ServerStream) error {
	if err := stream.RecvMsg(&emptypb.Empty{}); err != nil {
		return err
	}
	p, _ := peer.FromContext(stream.Context())
	ai, ok := p.AuthInfo.(transport.AuthInfo)
	if !ok {
		return status.Errorf(codes.Internal, "auth info %T", p.AuthInfo)
	}
	return stream.SendMsg(wrapperspb.String(fmt.Sprintf("alpn=%s meta=%q", ai.State.NegotiatedProtocol, ai.PeerMetadata)))
}

func startMetadataServer(t *testing.T, creds credentials.TransportCredentials) string {
	t.Helper()
	return testutil.Start(t, grpc.NewServer(grpc.Creds(creds), grpc.UnknownServiceHandler(peerMetadata)))
}

// callMetadata calls the server and returns what it saw, and what the
// client's side of the connection reported.
func callMetadata(ctx context.Context, t *testing.T, conn *grpc.ClientConn) (server, client string) {
	t.Helper()
	var p peer.Peer
	got, err := call(ctx, conn, grpc.Peer(&p))
	if err != nil {
		t.Fatal(err)
	}
	ai := p.AuthInfo.(transport.AuthInfo)
	return got, fmt.Sprintf("alpn=%s meta=%q", ai.State.NegotiatedProtocol, ai.PeerMetadata)
}

func TestPeerMetadataIsExchangedOncePerConnection(t *testing.T) {
	ctx := testutil.Context(t)
	f := newFixture(t)
	addr := startMetadataServer(t, transport.NewServerCredentials(f.server, strict(), quiet, transport.WithPeerMetadata("server-labels")))
	conn := dial(t, addr, mtlsInfo(exact(serverID)), transport.NewClientCredentials(f.client, transport.WithPeerMetadata("client-labels")))
	for range 3 { // every call on the connection sees what its handshake exchanged
		server, client := callMetadata(ctx, t, conn)
		if want := `alpn=mesh-h2-peer-metadata meta="client-labels"`; server != want {
			t.Errorf("server saw %s, want %s", server, want)
		}
		if want := `alpn=mesh-h2-peer-metadata meta="server-labels"`; client != want {
			t.Errorf("client saw %s, want %s", client, want)
		}
	}
}

// A side that does not offer the exchange, mesh's or grpc-go's own TLS
// credentials, speaks plain h2 with one that does.
func TestPeerMetadataIsNotExchangedWithPeersThatDoNotOfferIt(t *testing.T) {
	ctx := testutil.Context(t)
	f := newFixture(t)
	meshServer := func(opts ...transport.ServerOption) credentials.TransportCredentials {
		return transport.NewServerCredentials(f.server, strict(), append(opts, quiet)...)
	}
	meshClient := func(opts ...transport.ClientOption) credentials.TransportCredentials {
		return transport.NewClientCredentials(f.client, opts...)
	}
	grpcGoTLS := func(src transport.ProviderMap, server bool) credentials.TransportCredentials {
		svid, err := src["default"].GetX509SVID()
		if err != nil {
			t.Fatal(err)
		}
		bundle, _ := src["default"].GetX509BundleForTrustDomain(svid.ID.TrustDomain())
		pool := x509.NewCertPool()
		for _, c := range bundle.X509Authorities() {
			pool.AddCert(c)
		}
		cert := tls.Certificate{PrivateKey: svid.PrivateKey}
		for _, c := range svid.Certificates {
			cert.Certificate = append(cert.Certificate, c.Raw)
		}
		cfg := &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}
		if server {
			cfg.ClientAuth, cfg.ClientCAs = tls.RequireAndVerifyClientCert, pool
		} else {
			// SPIFFE certificates carry no DNS name to check the host against.
			cfg.InsecureSkipVerify = true
		}
		return credentials.NewTLS(cfg)
	}
	for _, tc := range []struct {
		name           string
		server, client credentials.TransportCredentials
		grpcGoServer   bool
	}{
		{"mesh server without it", meshServer(), meshClient(transport.WithPeerMetadata("client-labels")), false},
		{"mesh client without it", meshServer(transport.WithPeerMetadata("server-labels")), meshClient(), false},
		{"grpc-go's TLS client", meshServer(transport.WithPeerMetadata("server-labels")), grpcGoTLS(f.client, false), false},
		{"grpc-go's TLS server", grpcGoTLS(f.server, true), meshClient(transport.WithPeerMetadata("client-labels")), true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.grpcGoServer {
				addr := testutil.Start(t, grpc.NewServer(grpc.Creds(tc.server), grpc.UnknownServiceHandler(func(_ any, stream grpc.ServerStream) error {
					if err := stream.RecvMsg(&emptypb.Empty{}); err != nil {
						return err
					}
					p, _ := peer.FromContext(stream.Context())
					return stream.SendMsg(wrapperspb.String("alpn=" + p.AuthInfo.(credentials.TLSInfo).State.NegotiatedProtocol))
				})))
				conn := dial(t, addr, mtlsInfo(exact(serverID)), tc.client)
				server, client := callMetadata(ctx, t, conn)
				if server != "alpn=h2" || client != `alpn=h2 meta=""` {
					t.Errorf("server saw %s, client %s; want h2 and nothing exchanged", server, client)
				}
				return
			}
			addr := startMetadataServer(t, tc.server)
			conn := dial(t, addr, mtlsInfo(exact(serverID)), tc.client)
			var out wrapperspb.StringValue
			if err := conn.Invoke(ctx, whoamiPath, &emptypb.Empty{}, &out); err != nil {
				t.Fatal(err)
			}
			if want := `alpn=h2 meta=""`; out.GetValue() != want {
				t.Errorf("server saw %s, want %s", out.GetValue(), want)
			}
		})
	}
}

// rawTLSServer accepts one TLS connection that negotiates the exchange
// with the server's SVID and hands it to serve.
func rawTLSServer(t *testing.T, f fixture, serve func(*tls.Conn)) string {
	t.Helper()
	svid, err := f.server["default"].GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	cert := tls.Certificate{PrivateKey: svid.PrivateKey}
	for _, c := range svid.Certificates {
		cert.Certificate = append(cert.Certificate, c.Raw)
	}
	lis, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{cert},
		NextProtos:   []string{alpnExchange},
		ClientAuth:   tls.RequireAnyClientCert,
	})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	t.Cleanup(func() { lis.Close(); <-done })
	go func() {
		defer close(done)
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			tc := c.(*tls.Conn)
			if tc.Handshake() == nil {
				serve(tc)
			}
			c.Close()
		}
	}()
	return lis.Addr().String()
}

// A peer that negotiates the exchange and then breaks it fails the
// handshake with an error that says so; nothing is left half open.
func TestPeerMetadataExchangeRefusesBadFrames(t *testing.T) {
	ctx := testutil.Context(t)
	f := newFixture(t)
	client := transport.NewClientCredentials(f.client, quiet, transport.WithPeerMetadata("client-labels"))

	t.Run("server frame over the limit", func(t *testing.T) {
		addr := rawTLSServer(t, f, func(c *tls.Conn) {
			var frame [2]byte
			binary.BigEndian.PutUint16(frame[:], 60000)
			c.Write(frame[:])
		})
		conn := dial(t, addr, mtlsInfo(exact(serverID)), client)
		_, err := call(ctx, conn)
		wantRPCError(t, err, "peer metadata exchange", "60000 bytes, over the limit")
	})
	t.Run("server closes mid-frame", func(t *testing.T) {
		addr := rawTLSServer(t, f, func(c *tls.Conn) {
			var frame [2]byte
			binary.BigEndian.PutUint16(frame[:], 100)
			c.Write(append(frame[:], "short"...))
		})
		conn := dial(t, addr, mtlsInfo(exact(serverID)), client)
		_, err := call(ctx, conn)
		wantRPCError(t, err, "peer metadata exchange: reading the peer's")
	})
	t.Run("client frame over the limit", func(t *testing.T) {
		addr, logs := startLoggedServer(t, f.server, strict(), transport.WithPeerMetadata("server-labels"))
		svid, _ := f.client["default"].GetX509SVID()
		cert := tls.Certificate{PrivateKey: svid.PrivateKey}
		for _, c := range svid.Certificates {
			cert.Certificate = append(cert.Certificate, c.Raw)
		}
		c, err := tls.Dial("tcp", addr, &tls.Config{Certificates: []tls.Certificate{cert}, NextProtos: []string{alpnExchange}, InsecureSkipVerify: true})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if got := c.ConnectionState().NegotiatedProtocol; got != alpnExchange {
			t.Fatalf("server negotiated %q, want %q", got, alpnExchange)
		}
		var frame [2]byte
		binary.BigEndian.PutUint16(frame[:], 20000)
		c.Write(frame[:])
		if got := nextError(ctx, t, logs); !strings.Contains(got, "peer metadata exchange: the peer's is 20000 bytes, over the limit") {
			t.Errorf("server logged %q", got)
		}
	})
}
