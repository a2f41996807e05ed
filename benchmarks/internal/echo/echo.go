// Package echo is the service the sidecar harness measures, one unary
// method answering with the bytes it was sent, and what its lean clients
// share. It imports grpc-go and go-spiffe only, so that the plain grpc-go
// client built on it is a fair baseline for binary size and modules.
//
//	echo.Register(srv)
//	err := echo.Call(ctx, conn, echo.NewRequest(), new(wrapperspb.BytesValue))
package echo

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// Service and Method name the echo.
const (
	Service = "mesh.bench.Echo"
	Method  = "/" + Service + "/Echo"
	// PayloadSize is the request's (and response's) payload.
	PayloadSize = 1024
)

// Register adds the echo service to r.
func Register(r grpc.ServiceRegistrar) {
	r.RegisterService(&grpc.ServiceDesc{
		ServiceName: Service,
		HandlerType: (*any)(nil),
		Methods: []grpc.MethodDesc{{
			MethodName: "Echo",
			Handler: func(_ any, ctx context.Context, dec func(any) error, icpt grpc.UnaryServerInterceptor) (any, error) {
				req := new(wrapperspb.BytesValue)
				if err := dec(req); err != nil {
					return nil, err
				}
				if icpt == nil {
					return req, nil
				}
				info := &grpc.UnaryServerInfo{FullMethod: Method}
				return icpt(ctx, req, info, func(_ context.Context, req any) (any, error) { return req, nil })
			},
		}},
	}, struct{}{})
}

// NewRequest returns a request of PayloadSize bytes.
func NewRequest() *wrapperspb.BytesValue {
	req := &wrapperspb.BytesValue{Value: make([]byte, PayloadSize)}
	for i := range req.Value {
		req.Value[i] = byte(i)
	}
	return req
}

// Call sends req over conn and checks that resp came back the same size.
func Call(ctx context.Context, conn grpc.ClientConnInterface, req, resp *wrapperspb.BytesValue, opts ...grpc.CallOption) error {
	if err := conn.Invoke(ctx, Method, req, resp, opts...); err != nil {
		return err
	}
	if len(resp.Value) != len(req.Value) {
		return fmt.Errorf("echo answered %d bytes for %d", len(resp.Value), len(req.Value))
	}
	return nil
}

// WithAppHeader returns conn sending every unary call with one header of
// the program's own (x-tenant), as calls carrying an auth token or a tenant
// do: the harness's -app-header and BenchmarkUnaryAppHeader measure mesh
// beside plain grpc-go on such calls.
func WithAppHeader(conn grpc.ClientConnInterface) grpc.ClientConnInterface {
	return appHeaderConn{conn}
}

type appHeaderConn struct{ grpc.ClientConnInterface }

func (c appHeaderConn) Invoke(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) error {
	return c.ClientConnInterface.Invoke(metadata.AppendToOutgoingContext(ctx, "x-tenant", "shop"), method, args, reply, opts...)
}

// SendMeshHeaders is a client interceptor that adds to every call what a
// mesh client's call carries on the wire beyond plain gRPC's headers, a new
// W3C traceparent (not sampled) and x-request-id (a version 4 UUID), in
// grpc-go's own way, and does nothing else: plain grpc-go with it
// measures what those headers cost apart from mesh's code.
func SendMeshHeaders(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	var ids [3]uint64 // trace ID (16 bytes), span ID (8)
	for i := range ids {
		ids[i] = rand.Uint64()
	}
	var raw [24]byte
	for i, v := range ids {
		binary.BigEndian.PutUint64(raw[8*i:], v)
	}
	var tp [55]byte // 00-<trace ID>-<span ID>-00
	copy(tp[:], "00-")
	hex.Encode(tp[3:35], raw[:16])
	tp[35] = '-'
	hex.Encode(tp[36:52], raw[16:24])
	copy(tp[52:], "-00")
	raw[6] = raw[6]&0x0f | 0x40 // version 4
	raw[8] = raw[8]&0x3f | 0x80 // variant 10
	var uuid [36]byte           // 8-4-4-4-12 hex digits
	at := 0
	for i := range 16 {
		if i == 4 || i == 6 || i == 8 || i == 10 {
			uuid[at] = '-'
			at++
		}
		hex.Encode(uuid[at:at+2], raw[i:i+1])
		at += 2
	}
	ctx = metadata.AppendToOutgoingContext(ctx, "traceparent", string(tp[:]), "x-request-id", string(uuid[:]))
	return invoker(ctx, method, req, reply, cc, opts...)
}

// The certificate files in a workload directory, as the embedded control
// plane's WriteBootstrap names them (istio-agent's names).
const (
	certChainFile = "cert-chain.pem"
	keyFile       = "key.pem"
	rootCertFile  = "root-cert.pem"
)

// MTLS reads the certificate files in a workload directory into go-spiffe's
// mutual TLS configuration, as a team without a mesh would.
func MTLS(dir string, server bool) (*tls.Config, error) {
	svid, err := x509svid.Load(filepath.Join(dir, certChainFile), filepath.Join(dir, keyFile))
	if err != nil {
		return nil, err
	}
	bundle, err := x509bundle.Load(svid.ID.TrustDomain(), filepath.Join(dir, rootCertFile))
	if err != nil {
		return nil, err
	}
	if server {
		return tlsconfig.MTLSServerConfig(svid, bundle, tlsconfig.AuthorizeAny()), nil
	}
	return tlsconfig.MTLSClientConfig(svid, bundle, tlsconfig.AuthorizeAny()), nil
}

// ClientStats is what a lean client process reports about itself once its
// first RPC is answered.
type ClientStats struct {
	Goroutines int    `json:"goroutines"`
	HeapBytes  uint64 `json:"heap_bytes"` // live heap after a GC
}

// FirstRPC sends one echo over conn, waiting for the channel to be ready
// and retrying until the configuration has arrived; prints "ok" the moment
// it is answered, so that the harness can time the process from its
// start; and then prints a line of ClientStats.
func FirstRPC(ctx context.Context, conn grpc.ClientConnInterface) error {
	req, resp := NewRequest(), new(wrapperspb.BytesValue)
	for {
		err := Call(ctx, conn, req, resp, grpc.WaitForReady(true))
		if err == nil {
			break
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("first RPC: %w", err)
		case <-time.After(time.Millisecond):
		}
	}
	fmt.Println("ok")
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return json.NewEncoder(os.Stdout).Encode(ClientStats{Goroutines: runtime.NumGoroutine(), HeapBytes: ms.HeapAlloc})
}
