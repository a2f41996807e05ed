package controlplane

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"mesh/internal/testutil"
)

// TestStateDirKeepsTheCAAcrossRestarts: a control plane restarted on its
// state directory keeps its CA (workloads' certificate files stay valid)
// and its token key (their tokens keep working); the keys are 0600 and a
// key others may read is refused.
func TestStateDirKeepsTheCAAcrossRestarts(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	w := Workload{Name: "payments-v1", ServiceAccount: "payments"}
	first, err := New(testutil.Context(t), WithStateDir(dir))
	if err != nil {
		t.Fatal(err)
	}
	root := first.RootPEM()
	token, err := first.WorkloadToken(w)
	if err != nil {
		t.Fatal(err)
	}
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]os.FileMode{"": 0o700, StateCAKeyFile: 0o600, StateTokenKeyFile: 0o600, StateCACertFile: 0o644} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s mode %v, want %v", filepath.Join(dir, name), fi.Mode().Perm(), want)
		}
	}

	second := newTestServer(t, WithStateDir(dir))
	if !bytes.Equal(second.RootPEM(), root) {
		t.Fatal("the restarted control plane has another CA")
	}
	if ns, sa, err := second.certService.verify(token); err != nil || ns != "default" || sa != "payments" {
		t.Fatalf("a token from before the restart: %s/%s, %v; want it to verify", ns, sa, err)
	}
	if _, err := New(testutil.Context(t), WithStateDir(dir), WithTrustDomain("other.org")); err == nil || !strings.Contains(err.Error(), `"cluster.local"`) {
		t.Fatalf("the state's CA for another trust domain: %v, want an error naming both", err)
	}
	if other := newTestServer(t); bytes.Equal(other.RootPEM(), root) {
		t.Fatal("a control plane without the state directory has the same CA")
	}

	if err := os.Chmod(filepath.Join(dir, StateCAKeyFile), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := New(testutil.Context(t), WithStateDir(dir)); err == nil || !strings.Contains(err.Error(), StateCAKeyFile) {
		t.Fatalf("a CA key others may read: %v, want an error naming %s", err, StateCAKeyFile)
	}
	if err := os.Chmod(filepath.Join(dir, StateCAKeyFile), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, StateCACertFile)); err != nil {
		t.Fatal(err)
	}
	if _, err := New(testutil.Context(t), WithStateDir(dir)); err == nil || !strings.Contains(err.Error(), "without "+StateCACertFile) {
		t.Fatalf("a CA key without its certificate: %v, want an error, not a second CA", err)
	}
	if _, err := New(testutil.Context(t), WithStateDir(t.TempDir()), WithCA(root, nil)); err == nil || !strings.Contains(err.Error(), "WithStateDir") {
		t.Fatalf("WithStateDir and WithCA: %v, want an error", err)
	}
}
