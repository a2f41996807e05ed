package mesh_test

import (
	"bytes"
	"context"
	"runtime"
	"strconv"
	"sync"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/structpb"

	"mesh/controlplane"
	"mesh/internal/shop"
	"mesh/internal/testutil"
	"mesh/internal/workers"
)

// A mesh server runs calls on goroutines it reuses, so that no call pays
// for growing a new goroutine's stack; grpc.NumStreamWorkers(0) among the
// caller's options goes back to a goroutine per call.
func TestGRPCServerRunsCallsOnReusedGoroutines(t *testing.T) {
	const calls = 200
	for _, tc := range []struct {
		name    string
		opts    []grpc.ServerOption
		perCall bool // every call on a goroutine of its own
	}{
		{name: "default"},
		{name: "NumStreamWorkers(0)", opts: []grpc.ServerOption{grpc.NumStreamWorkers(0)}, perCall: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testutil.Context(t)
			var mu sync.Mutex
			goroutines := map[uint64]int{}
			counting := false
			record := func(ctx context.Context, req any, _ *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
				mu.Lock()
				if counting {
					goroutines[goroutineID(t)]++
				}
				mu.Unlock()
				return handler(ctx, req)
			}
			w := shop.StartWorldWith(t, ctx, shop.WorldConfig{V1: 100, V2: 0}, shop.WorldOptions{
				PaymentsServer: func(controlplane.Workload) []grpc.ServerOption {
					return append([]grpc.ServerOption{grpc.ChainUnaryInterceptor(record)}, tc.opts...)
				},
			})
			mu.Lock()
			counting = true
			mu.Unlock()
			for range calls {
				if err := w.Conn.Invoke(ctx, shop.ChargeMethod, &structpb.Struct{}, new(structpb.Struct)); err != nil {
					t.Fatal(err)
				}
			}
			mu.Lock()
			defer mu.Unlock()
			// Calls one at a time find a worker idle; only a call that
			// finds all of them busy gets a goroutine of its own.
			maxWorkers := int(workers.Stream())
			switch {
			case tc.perCall && len(goroutines) != calls:
				t.Errorf("%d calls ran on %d goroutines; want a goroutine per call", calls, len(goroutines))
			case !tc.perCall && len(goroutines) > maxWorkers:
				t.Errorf("%d calls one at a time ran on %d goroutines; want at most the %d workers", calls, len(goroutines), maxWorkers)
			}
		})
	}
}

// goroutineID reads the running goroutine's ID from its stack trace. It
// runs on the server's goroutines, so it reports with Error, not Fatal.
func goroutineID(t *testing.T) uint64 {
	buf := make([]byte, 64)
	buf = buf[:runtime.Stack(buf, false)]
	f := bytes.Fields(buf)
	if len(f) < 2 || string(f[0]) != "goroutine" {
		t.Errorf("unexpected stack trace %q", buf)
		return 0
	}
	id, err := strconv.ParseUint(string(f[1]), 10, 64)
	if err != nil {
		t.Error(err)
	}
	return id
}
