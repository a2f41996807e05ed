package identitytest_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"mesh/identity/identitytest"
	"mesh/internal/testutil"
)

func TestIssueVerifiesAgainstBundle(t *testing.T) {
	ca, err := identitytest.NewCA("example.org")
	if err != nil {
		t.Fatal(err)
	}
	svid, err := ca.Issue("spiffe://example.org/ns/a/sa/b", time.Hour, "b.a.svc")
	if err != nil {
		t.Fatal(err)
	}
	id, _, err := x509svid.Verify(svid.Certificates, ca.Bundle())
	if err != nil {
		t.Fatalf("issued SVID does not verify: %v", err)
	}
	if id != svid.ID || id.String() != "spiffe://example.org/ns/a/sa/b" {
		t.Errorf("verified ID = %s, want %s", id, svid.ID)
	}
	if got := svid.Certificates[0].DNSNames; len(got) != 1 || got[0] != "b.a.svc" {
		t.Errorf("DNS SANs = %v, want [b.a.svc]", got)
	}
	other, err := identitytest.NewCA("example.org")
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := x509svid.Verify(svid.Certificates, other.Bundle()); err == nil {
		t.Error("SVID verified against an unrelated CA")
	}
}

func TestIssueRejectsBadInput(t *testing.T) {
	ca, err := identitytest.NewCA("example.org")
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		id   string
		ttl  time.Duration
		want string
	}{
		{"spiffe://other.org/x", time.Hour, "not in trust domain"},
		{"not a spiffe id", time.Hour, "SPIFFE ID"},
		{"spiffe://example.org/x", 0, "ttl"},
	} {
		if _, err := ca.Issue(tt.id, tt.ttl); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("Issue(%q, %v) err = %v, want %q", tt.id, tt.ttl, err, tt.want)
		}
	}
	if _, err := identitytest.NewCA("Not A Domain!"); err == nil {
		t.Error("NewCA accepted an invalid trust domain")
	}
}

func TestWriteFiles(t *testing.T) {
	ca, err := identitytest.NewCA("example.org")
	if err != nil {
		t.Fatal(err)
	}
	svid, err := ca.Issue("spiffe://example.org/ns/a/sa/b", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := ca.WriteFiles(t.TempDir(), svid)
	if err != nil {
		t.Fatal(err)
	}
	loaded, err := x509svid.Load(cfg.CertFile, cfg.KeyFile)
	if err != nil {
		t.Fatal(err)
	}
	if loaded.ID != svid.ID {
		t.Errorf("loaded ID %s, want %s", loaded.ID, svid.ID)
	}
	root, err := os.ReadFile(cfg.CAFile)
	if err != nil || !strings.Contains(string(root), "BEGIN CERTIFICATE") {
		t.Errorf("root-cert.pem = %q, %v", root, err)
	}
}

func TestSignCSR(t *testing.T) {
	ca, err := identitytest.NewCA("example.org")
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	csr := func(uris ...string) []byte { return []byte(testutil.CSR(t, key, uris...)) }
	cert, err := ca.SignCSR(csr("spiffe://example.org/ns/a/sa/b"), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if !key.PublicKey.Equal(cert.PublicKey) {
		t.Error("certificate is not for the CSR's key")
	}
	id, _, err := x509svid.Verify([]*x509.Certificate{cert}, ca.Bundle())
	if err != nil || id.String() != "spiffe://example.org/ns/a/sa/b" {
		t.Errorf("Verify = %v, %v; want spiffe://example.org/ns/a/sa/b", id, err)
	}
	for _, tt := range []struct {
		name string
		csr  []byte
		ttl  time.Duration
		want string
	}{
		{"foreign trust domain", csr("spiffe://other.org/x"), time.Hour, "not in trust domain"},
		{"no URI", csr(), time.Hour, "has 0 URI SANs"},
		{"not a SPIFFE ID", csr("https://example.org/x"), time.Hour, "URI SAN"},
		{"zero ttl", csr("spiffe://example.org/x"), 0, "ttl"},
		{"not a CSR", ca.RootPEM(), time.Hour, "not CERTIFICATE REQUEST"},
		{"garbage", []byte("garbage"), time.Hour, "CSR"},
	} {
		if _, err := ca.SignCSR(tt.csr, tt.ttl); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: err = %v, want %q", tt.name, err, tt.want)
		}
	}
}
