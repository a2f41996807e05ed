package shop_test

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestOutsideModuleBuildsTheExamples copies examples/payments and
// examples/shop into a module of its own, as a newcomer would, and builds
// it against this checkout both ways README shows: a go.work workspace
// ("go work init . ../mesh") and a replace line. Copied code that imported
// mesh/internal/... would not build there.
func TestOutsideModuleBuildsTheExamples(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the go command")
	}
	meshDir, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	for _, how := range []string{"workspace", "replace"} {
		t.Run(how, func(t *testing.T) {
			dir := t.TempDir()
			copyExample(t, filepath.Join(meshDir, "examples", "shop"), filepath.Join(dir, "shop"))
			copyExample(t, filepath.Join(meshDir, "examples", "payments"), filepath.Join(dir, "payments"))
			write(t, filepath.Join(dir, "go.mod"), "module example.com/shopfront\n\ngo 1.26.0\n")
			// mesh from this checkout, the rest from the module cache or,
			// for what mesh's own build never needed, the GOPROXY a
			// newcomer's go command uses too: go mod tidy reads every
			// build tag's imports (go-control-plane's vtprotobuf files),
			// so a fresh machine's cache lacks some. No checksum database:
			// the module is a throwaway.
			env := append(os.Environ(), "GOSUMDB=off", "GOFLAGS=")
			run := func(args ...string) {
				t.Helper()
				cmd := exec.CommandContext(t.Context(), "go", args...)
				cmd.Dir, cmd.Env = dir, env
				if out, err := cmd.CombinedOutput(); err != nil {
					t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
				}
			}
			if how == "workspace" {
				env = append(env, "GOWORK=")
				run("work", "init", ".", meshDir)
			} else {
				env = append(env, "GOWORK=off", "GOFLAGS=-mod=mod")
				run("mod", "edit", "-require", "mesh@v0.0.0", "-replace", "mesh="+meshDir)
				run("mod", "tidy")
			}
			run("build", "-o", filepath.Join(dir, "payments-bin"), "./payments")
		})
	}
}

// copyExample copies a package's non-test Go files, pointing their imports
// of mesh/examples/shop at the copy.
func copyExample(t *testing.T, from, to string) {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(from, "*.go"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(data), `"mesh/internal/`) {
			t.Errorf("%s imports mesh/internal/...: a copy cannot build outside mesh", f)
		}
		write(t, filepath.Join(to, filepath.Base(f)), strings.ReplaceAll(string(data), `"mesh/examples/shop"`, `"example.com/shopfront/shop"`))
	}
}

func write(t *testing.T, path, data string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
}
