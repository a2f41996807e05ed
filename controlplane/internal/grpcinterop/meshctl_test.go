package grpcinterop

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
)

// TestMeshctlBootstrapJoinsGRPCGo: what a user without Go code does. The
// real meshctl binary runs the control plane and enrolls two workloads;
// grpc-go's own xDS server and client, given only the directories meshctl
// bootstrap wrote, join the mesh and call each other over mTLS.
func TestMeshctlBootstrapJoinsGRPCGo(t *testing.T) {
	// A hang guard, not a budget.
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	tmp := t.TempDir()
	bin := filepath.Join(tmp, "meshctl")
	build := exec.CommandContext(ctx, "go", "build", "-o", bin, "./cmd/meshctl")
	build.Dir = "../../.." // mesh's own module: its go.sum, not this one's
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build meshctl: %v\n%s", err, out)
	}
	cfg, state := filepath.Join(tmp, "cfg"), filepath.Join(tmp, "state")
	if err := os.Mkdir(cfg, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(cfg, "mesh.yaml"), meshYAML(100, 0), 0o644); err != nil {
		t.Fatal(err)
	}

	cp := exec.Command(bin, "controlplane", "-config", cfg, "-state", state, "-listen", "127.0.0.1:0", "-api", "127.0.0.1:0")
	stdout, err := cp.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var logs strings.Builder
	cp.Stderr = &logs
	if err := cp.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cp.Process.Signal(os.Interrupt)
		_ = cp.Wait()
		if t.Failed() {
			t.Logf("controlplane log:\n%s", logs.String())
		}
	})
	// Wait for "API on URL": the state dir then names the API.
	lines := bufio.NewScanner(stdout)
	for ready := false; !ready; {
		if !lines.Scan() {
			t.Fatalf("meshctl controlplane exited before its API listened: %v", lines.Err())
		}
		ready = strings.HasPrefix(lines.Text(), "API on ")
	}
	go func() {
		for lines.Scan() {
		}
	}()

	enroll := func(args ...string) []byte {
		t.Helper()
		dir := filepath.Join(tmp, args[1])
		args = append([]string{"bootstrap", "-state", state, "-dir", dir}, args...)
		if out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput(); err != nil {
			t.Fatalf("meshctl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		data, err := os.ReadFile(filepath.Join(dir, "bootstrap.json"))
		if err != nil {
			t.Fatal(err)
		}
		return data
	}

	payments := serveXDS(t, enroll("-name", "payments-v1", "-sa", "payments", "-service", "payments", "-port", "8080", "-labels", "version=v1"))
	conn := dialXDS(t, enroll("-name", "checkout", "-sa", "checkout", "-service", "checkout", "-port", "8080"), "xds:///payments:8080")
	var p peer.Peer
	if _, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{}, grpc.Peer(&p), grpc.WaitForReady(true)); err != nil {
		t.Fatalf("checkout -> payments through grpc-go's xDS: %v", err)
	}
	if p.Addr.String() != payments {
		t.Errorf("RPC reached %v, want payments-v1 at %v", p.Addr, payments)
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok {
		t.Fatalf("RPC was not over TLS: %T", p.AuthInfo)
	}
	if uris := info.State.PeerCertificates[0].URIs; len(uris) != 1 || uris[0].String() != "spiffe://cluster.local/ns/default/sa/payments" {
		t.Errorf("server identity = %v, want payments' SPIFFE ID", uris)
	}
}
