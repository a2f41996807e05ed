package main

import (
	"crypto/sha256"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"mesh/controlplane"
	"mesh/examples/shop"
)

// tree is every file and directory under root, with its mode and a hash
// of its contents: what "changes nothing" compares.
func tree(t *testing.T, root string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		v := info.Mode().String()
		if d.Type().IsRegular() {
			b, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			v += fmt.Sprintf(" %x", sha256.Sum256(b))
		}
		out[path] = v
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// TestBadInputEverySubcommand: for every subcommand, each of a missing
// directory, invalid YAML, an unknown workload and an unreachable control
// plane that applies to it gets one line on stderr naming what is wrong,
// a non-zero exit and no output, and changes no file.
func TestBadInputEverySubcommand(t *testing.T) {
	tmp := t.TempDir()
	missing := filepath.Join(tmp, "missing")
	bad := filepath.Join(tmp, "bad")
	os.Mkdir(bad, 0o755)
	writeConfig(t, bad, "mesh.yaml", []byte("kind: VirtualService\nspec: [\n"))
	badFile := filepath.Join(bad, "mesh.yaml")
	// Unreachable: a state dir whose control plane is gone.
	gone := filepath.Join(tmp, "gone")
	os.Mkdir(gone, 0o700)
	os.WriteFile(filepath.Join(gone, controlplane.StateAPIAddressFile), []byte("http://"+freeAddr(t)+"\n"), 0o600)
	os.WriteFile(filepath.Join(gone, controlplane.StateAPITokenFile), []byte(strings.Repeat("a", 64)), 0o600)
	// A live control plane, for unknown workloads and hosts.
	cfg, live := filepath.Join(tmp, "cfg"), filepath.Join(tmp, "live")
	os.Mkdir(cfg, 0o755)
	writeConfig(t, cfg, "mesh.yaml", shop.MeshYAML(90, 10))
	startCP(t, cfg, live, "127.0.0.1:0", "-admin", "127.0.0.1:0")
	out := filepath.Join(tmp, "out")

	const unreachable = "control plane unreachable"
	noAPI := "state dir " + missing + ": no API address"
	type tc struct {
		args []string
		want string
		// onStdout: the one line is on stdout, as analyze reports a file
		// that does not parse: a finding, its data.
		onStdout bool
	}
	cases := map[string][]tc{
		"controlplane": {
			{[]string{"controlplane", "-config", missing, "-state", filepath.Join(tmp, "s1")}, "config dir " + missing, false},
			{[]string{"controlplane", "-config", bad, "-state", filepath.Join(tmp, "s2")}, badFile, false},
		},
		"bootstrap": {
			{[]string{"bootstrap", "-state", missing, "-name", "x", "-dir", out}, noAPI, false},
			{[]string{"bootstrap", "-state", gone, "-name", "x", "-dir", out}, unreachable, false},
		},
		"canary": {
			{[]string{"canary", "status", "payments", "-state", missing}, noAPI, false},
			{[]string{"canary", "set", "payments", "v1=100", "-state", gone}, unreachable, false},
			{[]string{"canary", "status", "nothing", "-state", live}, "nothing.default.svc.cluster.local", false},
			{[]string{"canary", "promote", "nothing", "v2", "-state", live}, "nothing.default.svc.cluster.local", false},
		},
		"status": {
			{[]string{"status", "-state", missing}, noAPI, false},
			{[]string{"status", "-state", gone}, unreachable, false},
		},
		"proxy-status": {
			{[]string{"proxy-status", "-state", missing}, noAPI, false},
			{[]string{"proxy-status", "-state", gone}, unreachable, false},
		},
		"proxy-config": {
			{[]string{"proxy-config", "routes", "checkout", "-state", missing}, noAPI, false},
			{[]string{"proxy-config", "routes", "checkout", "-state", gone}, unreachable, false},
			{[]string{"proxy-config", "routes", "nobody", "-state", live}, "workload default/nobody: not enrolled", false},
		},
		"top": {
			{[]string{"top", "-state", missing}, noAPI, false},
			{[]string{"top", "-state", gone, "-window", "1s"}, unreachable, false},
		},
		"tap": {
			{[]string{"tap", "checkout", "-state", missing}, noAPI, false},
			{[]string{"tap", "checkout", "-state", gone}, unreachable, false},
			{[]string{"tap", "nobody", "-state", live}, "workload default/nobody: not enrolled", false},
		},
		"dashboard": {
			{[]string{"dashboard", "-state", missing, "-open=false"}, noAPI, false},
			{[]string{"dashboard", "-state", gone, "-open=false"}, unreachable, false},
		},
		"analyze": {
			{[]string{"analyze", missing}, missing, false},
			{[]string{"analyze", bad}, badFile, true},
			{[]string{"analyze", "-live", "-state", missing}, noAPI, false},
			{[]string{"analyze", "-live", "-state", gone}, unreachable, false},
		},
	}
	for _, c := range commands() {
		if len(cases[c.name]) == 0 {
			t.Errorf("no bad-input case for meshctl %s", c.name)
		}
	}
	for _, name := range slices.Sorted(maps.Keys(cases)) {
		for _, c := range cases[name] {
			t.Run(strings.Join(c.args, " "), func(t *testing.T) {
				before := tree(t, tmp)
				r := meshctl(t, c.args...)
				if r.code == 0 {
					t.Errorf("exit 0, want non-zero")
				}
				line, other := r.stderr, r.stdout
				if c.onStdout {
					line, other = r.stdout, r.stderr
				}
				if strings.TrimSpace(other) != "" {
					t.Errorf("output %q beside the error line, want nothing", other)
				}
				if n := strings.Count(strings.TrimSpace(line), "\n"); n != 0 || !strings.Contains(line, c.want) {
					t.Errorf("%q: want one line containing %q", line, c.want)
				}
				after := tree(t, tmp)
				for p, v := range after {
					if before[p] != v {
						t.Errorf("%s changed: %q -> %q", p, before[p], v)
					}
				}
				for p := range before {
					if _, ok := after[p]; !ok {
						t.Errorf("%s removed", p)
					}
				}
			})
		}
	}
	if st := canaryStatus(t, live); st.Weights["v1"] != 90 || st.Weights["v2"] != 10 {
		t.Errorf("weights after bad input: %v, want v1=90 v2=10", st.Weights)
	}
}
