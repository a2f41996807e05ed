package benchmarks

import "testing"

// BenchmarkUnary runs plain grpc-go and mesh in the same run; compare the
// two sub-benchmarks, not their absolute times.
func BenchmarkUnary(b *testing.B) {
	b.Run("grpc-go-mtls", UnaryGRPC)
	b.Run("grpc-go-mtls-headers", UnaryGRPCHeaders)
	b.Run("grpc-go-mtls-traced", UnaryGRPCTraced)
	b.Run("mesh", UnaryMesh)
}
