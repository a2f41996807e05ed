package echo

import (
	"testing"

	"mesh/controlplane"
)

// The file names are the control plane's, spelled out so that the lean
// clients do not link the control plane.
func TestFileNamesAreTheControlPlanes(t *testing.T) {
	for _, c := range [][2]string{
		{certChainFile, controlplane.CertChainFile},
		{keyFile, controlplane.KeyFile},
		{rootCertFile, controlplane.RootCertFile},
	} {
		if c[0] != c[1] {
			t.Errorf("file name %q, control plane writes %q", c[0], c[1])
		}
	}
}
