package mesh_test

import (
	"path/filepath"
	"strings"
	"testing"

	"mesh"
	"mesh/internal/testutil"
)

// TestLastBootstrapOptionWins: of several bootstrap options, New uses the
// last given, and none is ignored in favour of an earlier one.
func TestLastBootstrapOptionWins(t *testing.T) {
	ctx := testutil.Context(t)
	missing := filepath.Join(t.TempDir(), "missing.json")
	if m, err := mesh.New(ctx, mesh.WithBootstrapJSON([]byte(`{}`)), mesh.WithBootstrapFile(missing)); err == nil || !strings.Contains(err.Error(), missing) {
		if m != nil {
			m.Close()
		}
		t.Errorf("JSON then file: New error %v, want the file's", err)
	}
	if m, err := mesh.New(ctx, mesh.WithBootstrapFile(missing), mesh.WithBootstrapJSON([]byte(`{"xds_servers": []}`))); err == nil || strings.Contains(err.Error(), missing) {
		if m != nil {
			m.Close()
		}
		t.Errorf("file then JSON: New error %v, want the JSON's", err)
	}
}
