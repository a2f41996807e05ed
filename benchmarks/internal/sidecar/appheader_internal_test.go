package sidecar

import (
	"context"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"

	"mesh/benchmarks/internal/echo"
	"mesh/benchmarks/internal/sidecar/roles"
	"mesh/internal/testutil"
)

// TestAppHeaderReachesServer runs the role program as a client with the
// arguments a run with AppHeader gives it, against a server that counts
// the calls carrying the program's own header: every call carries it, and
// without AppHeader none does.
func TestAppHeaderReachesServer(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a program")
	}
	ctx := testutil.Context(t)
	exe, err := BuildRole(ctx, t.TempDir(), t.Output())
	if err != nil {
		t.Fatal(err)
	}
	for _, appHeader := range []bool{true, false} {
		var calls, tagged atomic.Int64
		srv := grpc.NewServer(grpc.UnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
			calls.Add(1)
			if md, _ := metadata.FromIncomingContext(ctx); len(md.Get("x-tenant")) == 1 {
				tagged.Add(1)
			}
			return handler(ctx, req)
		}))
		echo.Register(srv)
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		served := make(chan error, 1)
		go func() { served <- srv.Serve(lis) }()

		cfg := &Config{AppHeader: appHeader}
		cmd := exec.CommandContext(ctx, exe)
		cmd.Env = append(os.Environ(), roles.Env+"=client", roles.Env+"_ARGS="+clientArgs(cfg, "plain", lis.Addr().String(), ""))
		cmd.Stdin = strings.NewReader("closed 2 50\n")
		cmd.Stderr = t.Output()
		out, err := cmd.Output()
		srv.Stop()
		<-served
		if err != nil {
			t.Fatalf("app header %v: role client: %v", appHeader, err)
		}
		if !strings.HasPrefix(string(out), "ready\n") || !strings.Contains(string(out), `"n":50`) {
			t.Fatalf("app header %v: role client printed %q", appHeader, out)
		}
		want := calls.Load()
		if !appHeader {
			want = 0
		}
		if calls.Load() < 50 || tagged.Load() != want {
			t.Errorf("app header %v: %d of %d calls carried x-tenant, want %d", appHeader, tagged.Load(), calls.Load(), want)
		}
	}
}
