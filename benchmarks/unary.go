package benchmarks

import (
	"context"
	"crypto/tls"
	"net"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"mesh/benchmarks/internal/echo"
	"mesh/controlplane"
	"mesh/internal/shop"
	"mesh/telemetry"
)

// UnaryGRPC measures one unary RPC at a time over plain grpc-go with mutual
// TLS (go-spiffe's tls.Config, SVIDs from the same CA the mesh uses): what a
// team writes without a mesh.
func UnaryGRPC(b *testing.B) { unaryGRPC(b, nil, nil) }

// UnaryGRPCHeaders is UnaryGRPC with the client sending, on every call,
// the two headers a mesh call carries beyond plain gRPC's (a new
// traceparent and x-request-id): what they cost in grpc-go's transport,
// apart from mesh's code.
func UnaryGRPCHeaders(b *testing.B) {
	unaryGRPC(b, []grpc.DialOption{grpc.WithUnaryInterceptor(echo.SendMeshHeaders)}, nil)
}

// UnaryGRPCTraced is UnaryGRPC plus mesh's tracing stats handlers, with a
// sampler that records nothing: it separates what tracing costs from what
// routing and the rest of the mesh cost.
func UnaryGRPCTraced(b *testing.B) {
	tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.NeverSample()))
	defer tp.Shutdown(context.Background())
	unaryGRPC(b,
		[]grpc.DialOption{grpc.WithStatsHandler(telemetry.NewClientHandler(telemetry.WithTracerProvider(tp)))},
		[]grpc.ServerOption{grpc.StatsHandler(telemetry.NewServerHandler(telemetry.WithTracerProvider(tp)))})
}

func unaryGRPC(b *testing.B, dialOpts []grpc.DialOption, serverOpts []grpc.ServerOption) {
	unaryGRPCConn(b, dialOpts, serverOpts, sameConn)
}

// unaryGRPCConn is unaryGRPC sending its calls through wrap(conn).
func unaryGRPCConn(b *testing.B, dialOpts []grpc.DialOption, serverOpts []grpc.ServerOption, wrap func(grpc.ClientConnInterface) grpc.ClientConnInterface) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cp, err := controlplane.New(ctx, controlplane.WithLogger(shop.TestLogger(b)))
	if err != nil {
		b.Fatal(err)
	}
	defer cp.Close()
	serverTLS := svidTLS(b, cp, "payments", true)
	clientTLS := svidTLS(b, cp, "checkout", false)

	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := grpc.NewServer(append(serverOpts, grpc.Creds(credentials.NewTLS(serverTLS)))...)
	(&shop.Payments{Version: "v1"}).Register(srv)
	go srv.Serve(lis)
	defer srv.Stop()
	conn, err := grpc.NewClient(lis.Addr().String(), append(dialOpts, grpc.WithTransportCredentials(credentials.NewTLS(clientTLS)))...)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	runUnary(ctx, b, wrap(conn))
}

// UnaryMesh measures the same RPC through mesh: routed by xDS from the
// embedded control plane, mTLS from the workloads' SVIDs, and traced with a
// sampler that records nothing (as production tracing mostly does).
func UnaryMesh(b *testing.B) { unaryMeshConn(b, sameConn) }

// unaryMeshConn is UnaryMesh sending its calls through wrap(conn).
func unaryMeshConn(b *testing.B, wrap func(grpc.ClientConnInterface) grpc.ClientConnInterface) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	w := shop.StartWorld(b, ctx, shop.WorldConfig{V1: 100, V2: 0, Sampler: sdktrace.NeverSample()})
	runUnary(ctx, b, wrap(w.Conn))
}

// sameConn sends calls through conn unchanged.
func sameConn(conn grpc.ClientConnInterface) grpc.ClientConnInterface { return conn }

func runUnary(ctx context.Context, b *testing.B, conn grpc.ClientConnInterface) {
	// Warm the connection so the handshake is not measured.
	if _, err := shop.Charge(ctx, conn); err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, err := shop.Charge(ctx, conn); err != nil {
			b.Fatal(err)
		}
	}
}

// svidTLS builds a plain mTLS config from an SVID minted by cp's CA.
func svidTLS(b *testing.B, cp *controlplane.Server, sa string, server bool) *tls.Config {
	chain, key, err := cp.IssueSVID("default", sa)
	if err != nil {
		b.Fatal(err)
	}
	svid, err := x509svid.Parse(chain, key)
	if err != nil {
		b.Fatal(err)
	}
	bundle, err := x509bundle.Parse(spiffeid.RequireTrustDomainFromString("cluster.local"), cp.RootPEM())
	if err != nil {
		b.Fatal(err)
	}
	if server {
		return tlsconfig.MTLSServerConfig(svid, bundle, tlsconfig.AuthorizeAny())
	}
	return tlsconfig.MTLSClientConfig(svid, bundle, tlsconfig.AuthorizeAny())
}
