package csr_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"log/slog"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"mesh/controlplane"
	"mesh/identity/csr"
	"mesh/identity/internal/source"
	"mesh/identity/internal/sourcetest"
	"mesh/internal/testutil"
)

// The embedded control plane is the CA an agentless workload meets in
// tests and examples: a csr.Source gets the identity its token proves, and
// nothing else.
func TestCSRSourceWithEmbeddedControlPlane(t *testing.T) {
	ctx := testutil.Context(t)
	cp, err := controlplane.New(ctx, controlplane.WithTrustDomain(sourcetest.TD), controlplane.WithCertTTL(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cp.Close() })
	token, err := cp.WorkloadToken(controlplane.Workload{Name: "payments-v1", Namespace: "shop", ServiceAccount: "payments"})
	if err != nil {
		t.Fatal(err)
	}
	cfg := csr.Config{
		Addr:           cp.Addr(),
		Token:          func(context.Context) (string, error) { return token, nil },
		TrustDomain:    sourcetest.TD,
		Namespace:      "shop",
		ServiceAccount: "payments",
		TTL:            10 * time.Minute,
		RootPEM:        cp.RootPEM(),
		// The control plane's port serves TLS with a certificate of its CA.
		TLS: &tls.Config{RootCAs: testutil.RootPool(t, cp.RootPEM()), MinVersion: tls.VersionTLS12},
	}
	clk := source.NewFakeClock(time.Now())
	src := newCSRSource(t, cfg, csr.WithClock(clk))
	svid, err := src.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	if svid.ID.String() != serverID {
		t.Fatalf("SVID ID = %s, want %s", svid.ID, serverID)
	}
	leaf := svid.Certificates[0]
	if got := leaf.NotAfter.Sub(leaf.NotBefore); got != 11*time.Minute {
		t.Errorf("lifetime %v, want the 10m asked for plus the CA's minute of backdating", got)
	}
	updated := src.Updated()
	nextTimer(ctx, t, clk, "renewal").Fire()
	sourcetest.WaitClosed(ctx, t, updated, "renewal from the control plane")
	if sourcetest.SerialOf(t, src).Cmp(leaf.SerialNumber) == 0 {
		t.Fatal("renewal kept the old certificate")
	}

	cfg.ServiceAccount = "admin"
	_, err = csr.NewSource(ctx, cfg, csr.WithLogger(slog.New(slog.DiscardHandler)))
	if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "sa/admin") {
		t.Fatalf("asking for another identity: err = %v, want PermissionDenied naming sa/admin", err)
	}
	cfg.ServiceAccount = "payments"
	cfg.Token = func(context.Context) (string, error) { return "forged", nil }
	_, err = csr.NewSource(ctx, cfg, csr.WithLogger(slog.New(slog.DiscardHandler)))
	if status.Code(err) != codes.Unauthenticated {
		t.Fatalf("forged token: err = %v, want Unauthenticated", err)
	}
}

// Over the control plane's TLS CA endpoint the token is encrypted and the
// workload verifies the CA with the root it was given.
func TestCSRSourceWithEmbeddedControlPlaneOverTLS(t *testing.T) {
	ctx := testutil.Context(t)
	cp, err := controlplane.New(ctx, controlplane.WithTrustDomain(sourcetest.TD))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cp.Close() })
	caAddr, err := cp.ServeCATLS(ctx, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	token, err := cp.WorkloadToken(controlplane.Workload{Name: "payments-v1", Namespace: "shop", ServiceAccount: "payments"})
	if err != nil {
		t.Fatal(err)
	}
	roots := testutil.RootPool(t, cp.RootPEM())
	src := newCSRSource(t, csr.Config{
		Addr:           caAddr,
		Token:          func(context.Context) (string, error) { return token, nil },
		TrustDomain:    sourcetest.TD,
		Namespace:      "shop",
		ServiceAccount: "payments",
		TLS:            &tls.Config{RootCAs: roots, ServerName: controlplane.CAServerName, MinVersion: tls.VersionTLS12},
	})
	svid, err := src.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	if svid.ID.String() != serverID {
		t.Fatalf("SVID ID = %s, want %s", svid.ID, serverID)
	}
	bundle, err := src.GetX509BundleForTrustDomain(svid.ID.TrustDomain())
	if err != nil {
		t.Fatal(err)
	}
	if got := bundle.X509Authorities(); len(got) != 1 || !roots.Equal(poolOf(got[0])) {
		t.Fatal("bundle is not the control plane's root")
	}
}

func poolOf(c *x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(c)
	return p
}
