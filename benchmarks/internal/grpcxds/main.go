// Command grpcxds is stock grpc-go's proxyless xDS client doing what
// mesh's lean client (benchmarks/internal/sidecar/meshclient) does: the
// bootstrap from GRPC_XDS_BOOTSTRAP, mTLS from its certificate providers,
// one echo to xds:///<host:port>, then its goroutines and live heap. The
// sidecar harness builds it and measures it beside mesh's client.
//
// It is a module of its own because google.golang.org/grpc/xds must never
// enter mesh's build, and imports nothing from mesh for the same reason;
// so it spells the echo out again rather than share package echo.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"runtime"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	xdscreds "google.golang.org/grpc/credentials/xds"
	"google.golang.org/protobuf/types/known/wrapperspb"

	_ "google.golang.org/grpc/xds" // the xds resolver and balancers
)

func main() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := run(ctx, os.Args[1]); err != nil {
		fmt.Fprintln(os.Stderr, "grpcxds:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, target string) error {
	creds, err := xdscreds.NewClientCredentials(xdscreds.ClientOptions{FallbackCreds: insecure.NewCredentials()})
	if err != nil {
		return err
	}
	conn, err := grpc.NewClient("xds:///"+target, grpc.WithTransportCredentials(creds))
	if err != nil {
		return err
	}
	defer conn.Close()
	req, resp := &wrapperspb.BytesValue{Value: make([]byte, 1024)}, new(wrapperspb.BytesValue)
	for {
		err := conn.Invoke(ctx, "/mesh.bench.Echo/Echo", req, resp, grpc.WaitForReady(true))
		if err == nil && len(resp.Value) == len(req.Value) {
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
	return json.NewEncoder(os.Stdout).Encode(map[string]any{"goroutines": runtime.NumGoroutine(), "heap_bytes": ms.HeapAlloc})
}
