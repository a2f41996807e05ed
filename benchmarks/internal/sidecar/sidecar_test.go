package sidecar_test

import (
	"context"
	"os"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"mesh/benchmarks/internal/sidecar"
	"mesh/benchmarks/internal/sidecar/roles"
	"mesh/controlplane"
	"mesh/internal/leakcheck"
	"mesh/internal/testutil"
)

func TestMain(m *testing.M) { leakcheck.Main(m) }

// TestTinyRun runs every variant, HAProxy pair included, for a few hundred
// echoes: the harness works end to end, and every report row has a number.
// Without haproxy it skips, loudly; under CI it fails instead.
func TestTinyRun(t *testing.T) {
	if _, err := exec.LookPath("haproxy"); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("haproxy is not installed; .ci/run installs it: %v", err)
		}
		t.Skipf("SKIPPING the sidecar comparison: haproxy is not installed (apt-get install -y haproxy): %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute) // a hang guard
	defer cancel()
	// The role program again as the "before" build: the M/before variants
	// run.
	exe, err := sidecar.BuildRole(ctx, t.TempDir(), t.Output())
	if err != nil {
		t.Fatal(err)
	}
	res, err := sidecar.Run(ctx, sidecar.Config{Before: exe, Reps: 1, One: 50, Eight: 200, OpenRate: 500, Open: 50, Stderr: t.Output()})
	if err != nil {
		t.Fatal(err)
	}
	variants := append(sidecar.Variants, sidecar.Mesh+sidecar.Before, sidecar.MeshLean+sidecar.Before)
	if len(res.Runs) != len(variants) {
		t.Errorf("measured %d variants, want %v", len(res.Runs), variants)
	}
	for _, v := range variants {
		for ph, runs := range res.Runs[v] {
			if len(runs) != 1 {
				t.Fatalf("%s phase %d: %d measurements, want 1", v, ph, len(runs))
			}
			m := runs[0]
			// Eight at a time goes in slices, whose latencies are not kept.
			latencies := sidecar.Phase(ph) != sidecar.Eight
			if m.N == 0 || m.Throughput <= 0 || latencies && (m.P50 <= 0 || m.P99 < m.P50) {
				t.Errorf("%s phase %d: implausible %+v", v, ph, m)
			}
			if !latencies && m.N != 200 {
				t.Errorf("%s: %d echoes eight at a time over the slices, want 200", v, m.N)
			}
		}
		want := 2
		if v == sidecar.Sidecars || v == sidecar.SidecarsHTTP {
			want = 4 // client, server and both proxies
		}
		if n := len(res.Runs[v][0][0].CPU); n != want {
			t.Errorf("%s: CPU of %d processes, want %d", v, n, want)
		}
	}
	var b strings.Builder
	res.WriteMarkdown(&b)
	t.Log("\n" + b.String())
	for _, want := range []string{"C: HAProxy mTLS pair, TCP", "C7: HAProxy mTLS pair, HTTP/2", "proxy-server", "What each adds over B, against C7", "M: mesh (before)"} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("report lacks %q:\n%s", want, b.String())
		}
	}
}

// TestRoleProgramLinksNoHarness: the measured processes' program links no
// control plane, whose Envoy descriptors would sit in every process's live
// heap (about 1.3 MB) and make every variant collect garbage more often
// than its own service would.
func TestRoleProgramLinksNoHarness(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a program")
	}
	if roles.BootstrapFile != controlplane.BootstrapFile {
		t.Errorf("roles.BootstrapFile = %q, the control plane writes %q", roles.BootstrapFile, controlplane.BootstrapFile)
	}
	ctx := testutil.Context(t)
	exe, err := sidecar.BuildRole(ctx, t.TempDir(), t.Output())
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.CommandContext(ctx, "go", "version", "-m", exe).Output()
	if err != nil {
		t.Fatal(err)
	}
	// Module paths as go version -m lists them, tab first.
	for _, mod := range []string{"\tgithub.com/envoyproxy/", "\tistio.io/api\t", "\tsigs.k8s.io/yaml\t"} {
		if strings.Contains(string(out), mod) {
			t.Errorf("the role program links %s", strings.TrimSpace(mod))
		}
	}
	if !strings.Contains(string(out), "\tgo.opentelemetry.io/otel/sdk\t") {
		t.Errorf("the role program lacks the OpenTelemetry SDK M records with; go version -m said:\n%s", out)
	}
}

// TestLeanClients builds the three client programs and runs each to its
// first answer: the numbers benchmarks/README.md reports are all there,
// and the mesh client links neither grpc-go's xds package nor anything
// the baseline lacks that a plain client has no use for.
func TestLeanClients(t *testing.T) {
	if testing.Short() {
		t.Skip("builds three programs")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute) // a hang guard
	defer cancel()
	res, err := sidecar.MeasureClients(ctx, sidecar.ClientsConfig{Reps: 1, Stderr: t.Output()})
	if err != nil {
		t.Fatal(err)
	}
	for name, r := range res {
		if r.Binary <= 0 || len(r.Modules) == 0 || r.FirstRPC <= 0 || r.Goroutines <= 0 || r.HeapBytes == 0 {
			t.Errorf("%s: implausible %+v", name, r)
		}
	}
	if !slices.Contains(res[sidecar.XDSClient].Modules, "cloud.google.com/go/compute/metadata") {
		t.Errorf("stock xDS client's modules lack grpc-go xds's own dependency: %v", res[sidecar.XDSClient].Modules)
	}
	var b strings.Builder
	if err := res.WriteMarkdown(&b); err != nil {
		t.Fatal(err)
	}
	t.Log("\n" + b.String())
}
