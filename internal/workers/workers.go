// Package workers sizes the pool of goroutines a mesh gRPC server keeps to
// run calls on (grpc.NumStreamWorkers), in one place for the server and
// for the benchmark that gives plain grpc-go the same pool.
//
//	srv := grpc.NewServer(grpc.NumStreamWorkers(workers.Stream()))
package workers

import "runtime"

// Stream is how many goroutines a mesh gRPC server keeps to run calls on.
// grpc-go otherwise starts a goroutine per call, whose stack then grows by
// copying, several times, on every call: a tenth of a busy server's CPU
// (benchmarks/TELEMETRY.md, sixth round). A worker's stack stays grown. As
// many as cores is too few: a call holds its worker from its headers until
// its request message arrives. A call that finds every worker busy gets a
// goroutine of its own, so the count bounds only what is reused.
func Stream() uint32 {
	return uint32(max(16, 4*runtime.GOMAXPROCS(0)))
}
