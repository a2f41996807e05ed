package controlplane_test

import (
	"os/exec"
	"strings"
	"testing"
)

// TestImportsNoLibraryPackage: the control plane stands apart from the
// library it serves (DESIGN.md, "Layout and direction of imports"), so
// its graph page and everything else it uses come from internal packages
// that pull in no library package either.
func TestImportsNoLibraryPackage(t *testing.T) {
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("no go command to list the imports with")
	}
	out, err := exec.Command(goTool, "list", "-deps", "mesh/controlplane").Output()
	if err != nil {
		t.Fatalf("go list -deps mesh/controlplane: %v", err)
	}
	for _, pkg := range strings.Fields(string(out)) {
		if pkg != "mesh" && !strings.HasPrefix(pkg, "mesh/") {
			continue
		}
		if pkg != "mesh/controlplane" && !strings.HasPrefix(pkg, "mesh/internal/") {
			t.Errorf("controlplane imports %s, a library package", pkg)
		}
	}
}
