package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"mesh/controlplane"
)

// proc is one example binary running as its own process, its output lines
// readable as they come.
type proc struct {
	name  string
	cmd   *exec.Cmd
	lines chan string
	mu    sync.Mutex
	all   []string
	done  chan struct{}
}

func start(t *testing.T, name, bin string, env []string, args ...string) *proc {
	t.Helper()
	p := &proc{name: name, cmd: exec.Command(bin, args...), lines: make(chan string, 1024), done: make(chan struct{})}
	p.cmd.Env = append(os.Environ(), env...)
	out, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	p.cmd.Stderr = p.cmd.Stdout // one stream, in order
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("starting %s: %v", name, err)
	}
	go func() {
		defer close(p.done)
		s := bufio.NewScanner(out)
		for s.Scan() {
			p.mu.Lock()
			p.all = append(p.all, s.Text())
			p.mu.Unlock()
			select {
			case p.lines <- s.Text():
			default: // the test reads what it needs; the rest is in all
			}
		}
		_ = p.cmd.Wait()
	}()
	t.Cleanup(func() {
		p.stop()
		if t.Failed() {
			t.Logf("%s output:\n%s", name, p.output())
		}
	})
	return p
}

// stop interrupts the process, as Ctrl-C would, and waits for it.
func (p *proc) stop() {
	_ = p.cmd.Process.Signal(os.Interrupt)
	select {
	case <-p.done:
	case <-time.After(time.Minute): // a hang guard
		_ = p.cmd.Process.Kill()
		<-p.done
	}
}

func (p *proc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return strings.Join(p.all, "\n")
}

// waitLine returns the first line from now on that matches re.
func (p *proc) waitLine(ctx context.Context, t *testing.T, re *regexp.Regexp) []string {
	t.Helper()
	for {
		select {
		case line := <-p.lines:
			if m := re.FindStringSubmatch(line); m != nil {
				return m
			}
		case <-p.done:
			t.Fatalf("%s exited while waiting for %q:\n%s", p.name, re, p.output())
		case <-ctx.Done():
			t.Fatalf("%s never printed %q:\n%s", p.name, re, p.output())
		}
	}
}

// TestWorkloadsAsSeparateProcesses runs README's separate-process
// commands: the control plane, payments v1 and v2 and checkout, each its
// own process with its bootstrap from MESH_BOOTSTRAP and its admin pages on
// -admin. Checkout's split follows the control plane; the control plane
// restarts on its state directory while checkout keeps calling, and no
// call fails.
func TestWorkloadsAsSeparateProcesses(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs four processes")
	}
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute) // a hang guard
	defer cancel()
	bins := t.TempDir()
	for _, pkg := range []string{"examples/controlplane", "examples/payments", "examples/checkout", "cmd/meshctl"} {
		name := filepath.Base(pkg)
		build := exec.CommandContext(ctx, "go", "build", "-o", filepath.Join(bins, name), "mesh/"+pkg)
		if out, err := build.CombinedOutput(); err != nil {
			t.Fatalf("go build %s: %v\n%s", name, err, out)
		}
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	xdsAddr := lis.Addr().String()
	lis.Close()
	dir := t.TempDir()
	config, err := filepath.Abs("mesh.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cpArgs := []string{"-addr", xdsAddr, "-dir", dir, "-config", config}
	cp := start(t, "controlplane", filepath.Join(bins, "controlplane"), nil, cpArgs...)
	cp.waitLine(ctx, t, regexp.MustCompile(`serving xDS on`))

	adminURL := regexp.MustCompile(`url=(http://127\.0\.0\.1:\d+/)`)
	bootstrap := func(name string) []string {
		return []string{"MESH_BOOTSTRAP=" + filepath.Join(dir, name, "bootstrap.json")}
	}
	payments := map[string]*proc{}
	for _, v := range []string{"v1", "v2"} {
		p := start(t, "payments-"+v, filepath.Join(bins, "payments"), bootstrap("payments-"+v), "-version", v, "-admin", "127.0.0.1:0")
		p.waitLine(ctx, t, regexp.MustCompile(`serving on`))
		payments[v] = p
	}
	// Serving comes before joining: a payments version is an endpoint once
	// its xDS stream is up. Checkout starts after both joined, so that no
	// first call finds a version without endpoints (and records a series
	// of an unknown destination).
	joined := regexp.MustCompile(`node connected node=sidecar~[^~]*~(payments-v[12])\.`)
	for seen := map[string]bool{}; len(seen) < 2; {
		seen[cp.waitLine(ctx, t, joined)[1]] = true
	}
	checkout := start(t, "checkout", filepath.Join(bins, "checkout"), bootstrap("checkout"), "-n", "100", "-admin", "127.0.0.1:0")
	admin := checkout.waitLine(ctx, t, adminURL)[1]

	round := regexp.MustCompile(`v1 (\d+) \([\d.]+%\)  v2 (\d+) \([\d.]+%\)  failed (\d+)$`)
	checkout.waitLine(ctx, t, round)

	// Checkout's /metrics says what Kiali needs: its cluster, and edges to
	// both versions.
	resp, err := http.Get(admin + "metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`source_cluster="Kubernetes"`, `destination_cluster="Kubernetes"`,
		`destination_canonical_revision="v1"`, `destination_canonical_revision="v2"`} {
		if !strings.Contains(string(body), want) {
			t.Errorf("checkout's /metrics lacks %s", want)
		}
	}
	if strings.Contains(string(body), `_cluster="unknown"`) {
		t.Errorf("checkout's /metrics has series of an unknown cluster, which Kiali drops")
	}

	// It is meshctl's control plane: meshctl finds its API through the
	// state dir and lists the three workloads connected.
	ps := exec.CommandContext(ctx, filepath.Join(bins, "meshctl"), "proxy-status", "-state", filepath.Join(dir, "controlplane-state"), "-o", "json")
	ps.Env = append(os.Environ(), "MESHCTL_STATE=", "MESHCTL_API=", "MESHCTL_TOKEN_FILE=")
	out, err := ps.Output()
	var connected []controlplane.ProxyStatus
	names := map[string]bool{}
	if err := errors.Join(err, json.Unmarshal(out, &connected)); err != nil {
		t.Errorf("meshctl proxy-status against the example: %v\n%s", err, out)
	}
	for _, p := range connected {
		names[p.Workload] = true
	}
	if !names["default/payments-v1"] || !names["default/payments-v2"] || !names["default/checkout"] {
		t.Errorf("meshctl proxy-status against the example lists %v, want payments-v1, payments-v2 and checkout", names)
	}

	// Restart the control plane on its state directory. Checkout keeps
	// calling through it; every round, during and after, has no failure.
	cp.stop()
	restarted := start(t, "controlplane (restarted)", filepath.Join(bins, "controlplane"), nil, cpArgs...)
	restarted.waitLine(ctx, t, regexp.MustCompile(`serving xDS on`))
	for range 5 {
		m := checkout.waitLine(ctx, t, round)
		if m[3] != "0" {
			t.Fatalf("a round after the control plane restarted: %s failed (v1 %s, v2 %s)", m[3], m[1], m[2])
		}
	}
	// The earlier rounds too.
	for _, line := range strings.Split(checkout.output(), "\n") {
		if m := round.FindStringSubmatch(line); m != nil && m[3] != "0" {
			t.Errorf("checkout round with failures: %s", line)
		}
	}
	// A new payments v2 process, enrolled by the restarted control plane:
	// checkout handshakes with it afresh, so both sides must trust what the
	// control plane wrote since. Within a few rounds it serves again.
	payments["v2"].stop()
	v2 := start(t, "payments-v2 (new)", filepath.Join(bins, "payments"), bootstrap("payments-v2"), "-version", "v2")
	v2.waitLine(ctx, t, regexp.MustCompile(`serving on`))
	for rounds := 0; ; rounds++ {
		if rounds == 30 {
			t.Fatalf("checkout never reached the new payments v2 cleanly:\n%s", checkout.output())
		}
		if m := checkout.waitLine(ctx, t, round); m[2] != "0" && m[3] == "0" {
			break
		}
	}
	if strings.Contains(checkout.output(), "handshake") {
		t.Errorf("checkout logged handshake failures:\n%s", checkout.output())
	}
}
