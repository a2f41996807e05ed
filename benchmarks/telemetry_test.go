package benchmarks

import "testing"

func BenchmarkUnaryMeshFull(b *testing.B) { UnaryMeshFull(b) }

func BenchmarkUnaryMeshFullSDKHistograms(b *testing.B) { UnaryMeshFullSDKHistograms(b) }

func BenchmarkUnaryGRPCOTel(b *testing.B) { UnaryGRPCOTel(b) }
