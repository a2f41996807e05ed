package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"

	"mesh/internal/testutil"
)

// quickStartCommands returns the lines of the shell block of README's
// "## Quick start" section.
func quickStartCommands(t *testing.T, readme string) []string {
	t.Helper()
	_, section, ok := strings.Cut(readme, "\n## Quick start\n")
	if !ok {
		t.Fatal("README has no ## Quick start")
	}
	if i := strings.Index(section, "\n## "); i >= 0 {
		section = section[:i]
	}
	_, block, ok := strings.Cut(section, "```sh\n")
	if !ok {
		t.Fatal("README's quick start has no sh block")
	}
	block, _, _ = strings.Cut(block, "```")
	return strings.Split(strings.TrimSpace(block), "\n")
}

// TestReadmeQuickStart runs the CLI path of README's quick start, line by
// line as written, in one shell: /tmp/mesh-quickstart becomes a temp dir
// and the fixed 127.0.0.1:15xxx ports free ones (the only changes). After
// each process started in the background, it waits until the process
// answers, as a user typing the next line would. Every line must exit 0.
func TestReadmeQuickStart(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), hangGuard)
	defer cancel()
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	lines := quickStartCommands(t, string(readme))
	tmp := t.TempDir()
	ports := map[string]string{}
	port := regexp.MustCompile(`127\.0\.0\.1:15\d\d\d`)
	// Waits for what a background line started, by the command it runs.
	ready := map[string]string{
		"meshctl controlplane":       "meshctl status -state ./cp-state",
		"MESH_BOOTSTRAP=./checkout/": "meshctl proxy-config routes checkout",
	}
	var script strings.Builder
	script.WriteString("set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null; wait' EXIT\ncd " + root + "\n")
	for i, line := range lines {
		line = strings.ReplaceAll(line, "/tmp/mesh-quickstart", tmp)
		line = port.ReplaceAllStringFunc(line, func(p string) string {
			if ports[p] == "" {
				ports[p] = freeAddr(t)
			}
			return ports[p]
		})
		fmt.Fprintf(&script, "echo %q\n%s\n", fmt.Sprintf("### line %d", i+1), line)
		for prefix, probe := range ready {
			if strings.HasPrefix(line, prefix) {
				fmt.Fprintf(&script, "until %s >/dev/null 2>&1; do sleep 0.2; done\n", probe)
			}
		}
	}
	script.WriteString("echo '### done'\n")
	// The whole group, background jobs too, is killed when the hang guard
	// fires.
	cmd := testutil.GroupCommand(ctx, "bash", "-c", script.String())
	cmd.Env = append(os.Environ(), "MESHCTL_STATE=", "MESHCTL_API=", "MESHCTL_TOKEN_FILE=", "DISPLAY=", "WAYLAND_DISPLAY=")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err = cmd.Run()
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) // nothing outlives the test
	if err != nil || !strings.Contains(out.String(), "### done") {
		t.Fatalf("the quick start failed (%v):\n%s", err, out.String())
	}
	t.Logf("quick start:\n%s", out.String())
	for _, want := range []string{"no findings", "payments.default.svc.cluster.local: v1=50 v2=50", "/mesh.examples.Payments/Charge", `"phase": "Progressing"`, "/debug/graph"} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("quick start output lacks %q", want)
		}
	}
}
