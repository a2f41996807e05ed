package benchmarks

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strconv"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"mesh/benchmarks/internal/echo"
)

// BenchmarkUnary runs plain grpc-go and mesh in the same run; compare the
// two sub-benchmarks, not their absolute times.
func BenchmarkUnary(b *testing.B) {
	b.Run("grpc-go-mtls", UnaryGRPC)
	b.Run("grpc-go-mtls-headers", UnaryGRPCHeaders)
	b.Run("grpc-go-mtls-traced", UnaryGRPCTraced)
	b.Run("mesh", UnaryMesh)
}

// BenchmarkUnaryHeaderFields sends plain grpc-go calls carrying 0 to 3
// metadata headers beyond grpc-go's own, with and without a deadline (which
// adds grpc-timeout): its bytes and allocations per call show what each
// header field costs in grpc-go's and x/net's transport, the ninth field far
// more than the others (benchmarks/README.md).
func BenchmarkUnaryHeaderFields(b *testing.B) {
	for _, deadline := range []bool{true, false} {
		for extra := range 4 {
			name := fmt.Sprintf("deadline=%t/extra=%d", deadline, extra)
			b.Run(name, func(b *testing.B) {
				unaryGRPC(b, []grpc.DialOption{grpc.WithUnaryInterceptor(extraHeaders(extra, deadline))}, nil)
			})
		}
	}
}

// extraHeaders is a client interceptor that adds n headers with new values
// to every call, and drops the call's deadline unless deadline is set.
func extraHeaders(n int, deadline bool) grpc.UnaryClientInterceptor {
	names := make([]string, n)
	for i := range names {
		names[i] = "x-extra-" + strconv.Itoa(i)
	}
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		if !deadline {
			ctx = context.WithoutCancel(ctx)
		}
		for _, name := range names {
			ctx = metadata.AppendToOutgoingContext(ctx, name, strconv.FormatUint(rand.Uint64(), 16))
		}
		return invoker(ctx, method, req, reply, cc, opts...)
	}
}

// BenchmarkUnaryAppHeader is BenchmarkUnary's plain grpc-go and mesh with
// every call carrying one header of the program's own, as calls with an
// auth token or tenant do: a ninth header field that both pay for, so what
// mesh adds is smaller than in BenchmarkUnary (benchmarks/README.md).
func BenchmarkUnaryAppHeader(b *testing.B) {
	b.Run("grpc-go-mtls", func(b *testing.B) { unaryGRPCConn(b, nil, nil, echo.WithAppHeader) })
	b.Run("mesh", func(b *testing.B) { unaryMeshConn(b, echo.WithAppHeader) })
}
