// Package flowcontrol holds the HTTP/2 flow-control windows of mesh's gRPC
// clients and servers, in one place for both and for the benchmark that
// gives plain grpc-go the same windows.
//
//	srv := grpc.NewServer(flowcontrol.ServerOptions()...)
//	conn, err := grpc.NewClient(target, append(flowcontrol.DialOptions(), creds)...)
//
// The windows are fixed, as Envoy's and Go's net/http's are. grpc-go's own
// start at 64 KiB and grow by estimating the bandwidth-delay product, for
// which each end sends the other a PING every round trip for as long as
// data flows. At one call in flight that is a PING and its ack each way on
// every call: frames, TLS records and wakeups the call does not need, and
// some 30% more system calls (benchmarks/TELEMETRY.md, tenth round).
package flowcontrol

import "google.golang.org/grpc"

const (
	// StreamWindow is how many bytes of one stream a receiver accepts
	// before its reader catches up: a call's most in flight each way. Over
	// three round trips' worth at 10 Gbit/s and 1 ms; what net/http's
	// client takes per stream.
	StreamWindow = 4 << 20
	// ConnWindow bounds the same for all the streams of a connection, so
	// what a peer can make a process hold per connection. It is the
	// ceiling grpc-go's estimation grows its windows to.
	ConnWindow = 16 << 20
)

// DialOptions returns the dial options that fix a channel's windows.
func DialOptions() []grpc.DialOption {
	return []grpc.DialOption{grpc.WithInitialWindowSize(StreamWindow), grpc.WithInitialConnWindowSize(ConnWindow)}
}

// ServerOptions returns the server options that fix a server's windows.
func ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{grpc.InitialWindowSize(StreamWindow), grpc.InitialConnWindowSize(ConnWindow)}
}
