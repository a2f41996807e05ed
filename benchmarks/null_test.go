package benchmarks

import (
	"context"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/stats"
)

type nullHandler struct{}

func (nullHandler) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context { return ctx }
func (nullHandler) HandleRPC(context.Context, stats.RPCStats)                       {}
func (nullHandler) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context {
	return ctx
}
func (nullHandler) HandleConn(context.Context, stats.ConnStats) {}

func BenchmarkNullHandler(b *testing.B) {
	unaryGRPC(b, []grpc.DialOption{grpc.WithStatsHandler(nullHandler{})}, []grpc.ServerOption{grpc.StatsHandler(nullHandler{})})
}
func BenchmarkNullInterceptors(b *testing.B) {
	unaryGRPC(b, []grpc.DialOption{grpc.WithChainUnaryInterceptor(func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		return invoker(ctx, method, req, reply, cc, opts...)
	})}, []grpc.ServerOption{grpc.ChainUnaryInterceptor(func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		return handler(ctx, req)
	})})
}
