package mesh_test

import (
	"crypto/x509"
	"os"
	"path/filepath"
	"testing"

	"mesh/controlplane"
)

// xdsCredentialsDir writes what a workload enrolled without certificate
// files needs to reach cp's xDS port: the CA's root (to verify cp over
// TLS) and a token proving w's identity. BootstrapJSON(w, dir) names both.
func xdsCredentialsDir(t *testing.T, cp *controlplane.Server, w controlplane.Workload) string {
	t.Helper()
	token, err := cp.WorkloadToken(w)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, controlplane.RootCertFile), cp.RootPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, controlplane.TokenFile), []byte(token), 0o600); err != nil {
		t.Fatal(err)
	}
	return dir
}

func rootPool(t *testing.T, pemData []byte) *x509.CertPool {
	t.Helper()
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemData) {
		t.Fatal("root PEM did not parse")
	}
	return pool
}
