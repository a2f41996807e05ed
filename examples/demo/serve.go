package main

import (
	"context"
	"fmt"
	"io"
	"maps"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"net/http"
	"strconv"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"mesh/examples/shop"
)

// serveUntilDone is -serve: the 90/10 split again, steady traffic with a
// few failing calls so the graph has something to colour, and the URLs to
// look at, until ctx ends.
func serveUntilDone(ctx context.Context, w *world, out io.Writer) error {
	if err := w.cp.Apply(shop.MeshYAML(90, 10)); err != nil {
		return err
	}
	base, err := w.cp.ServeAdmin(ctx, "127.0.0.1:0")
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "\nmesh graph     %s/debug/graph\n", base)
	for _, name := range slices.Sorted(maps.Keys(w.admin)) {
		fmt.Fprintf(out, "%-14s %s/  (metrics %s/metrics)\n", name, w.admin[name], w.admin[name])
	}
	fmt.Fprintln(out, "serving; interrupt to stop")
	stop := sendTraffic(w, 4, 5*time.Millisecond)
	<-ctx.Done()
	stop()
	return nil
}

// flakyMethod fails with INTERNAL on every flakyEvery-th call a payments
// workload serves, and succeeds otherwise: the demo calls it to put a known
// share of errors in the metrics and colour the graph. Counting on the
// server makes each edge's share exact, whatever the routing split.
const (
	flakyMethod = "/demo.Faults/Flaky"
	flakyEvery  = 10
)

// registerFaults registers the service behind flakyMethod.
func registerFaults(r grpc.ServiceRegistrar) {
	type faults interface{}
	var calls atomic.Int64
	flaky := func(context.Context, any) (any, error) {
		if calls.Add(1)%flakyEvery == 0 {
			return nil, status.Error(codes.Internal, "induced failure")
		}
		return &structpb.Struct{}, nil
	}
	r.RegisterService(&grpc.ServiceDesc{
		ServiceName: "demo.Faults",
		HandlerType: (*faults)(nil),
		Methods: []grpc.MethodDesc{{
			MethodName: "Flaky",
			Handler: func(srv any, ctx context.Context, dec func(any) error, icpt grpc.UnaryServerInterceptor) (any, error) {
				req := new(structpb.Struct)
				if err := dec(req); err != nil {
					return nil, err
				}
				if icpt == nil {
					return flaky(ctx, req)
				}
				return icpt(ctx, req, &grpc.UnaryServerInfo{Server: srv, FullMethod: flakyMethod}, flaky)
			},
		}},
	}, struct{}{})
}

// sendTraffic calls payments and web from `workers` goroutines each,
// pausing `pause` between calls: gRPC calls alternate Payments.Charge and
// flakyMethod, HTTP ones POST /version and /flaky, so about one call in
// 2*flakyEvery fails on each. The returned stop ends the traffic and waits
// for it.
func sendTraffic(w *world, workers int, pause time.Duration) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	loop := func(call func(i int)) {
		for i := 0; ctx.Err() == nil; i++ {
			call(i)
			select {
			case <-ctx.Done():
			case <-time.After(pause):
			}
		}
	}
	for range workers {
		wg.Go(func() {
			loop(func(i int) {
				if i%2 == 1 {
					_ = w.checkout.Invoke(ctx, flakyMethod, &structpb.Struct{}, &structpb.Struct{})
				} else {
					_, _ = shop.Charge(ctx, w.checkout)
				}
			})
		})
		wg.Go(func() {
			loop(func(i int) {
				path := "/version"
				if i%2 == 1 {
					path = "/flaky"
				}
				// A small body, so request throughput has bytes to show.
				req, err := http.NewRequestWithContext(ctx, http.MethodPost,
					"http://"+shop.WebHost+":"+strconv.Itoa(shop.WebPort)+path, strings.NewReader(`{"item":"socks"}`))
				if err != nil {
					return
				}
				if resp, err := w.web.Do(req); err == nil {
					_, _ = io.Copy(io.Discard, resp.Body)
					_ = resp.Body.Close()
				}
			})
		})
	}
	return func() {
		cancel()
		wg.Wait()
	}
}
