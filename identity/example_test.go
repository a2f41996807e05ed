package identity_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"mesh/controlplane"
	"mesh/identity"
	"mesh/identity/identitytest"
)

func ExampleNewFileSource() {
	ca, err := identitytest.NewCA("example.org")
	if err != nil {
		log.Fatal(err)
	}
	svid, err := ca.Issue("spiffe://example.org/ns/default/sa/payments", time.Hour)
	if err != nil {
		log.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "certs")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	// cert-chain.pem, key.pem and root-cert.pem, as istio-agent writes them.
	cfg, err := ca.WriteFiles(dir, svid)
	if err != nil {
		log.Fatal(err)
	}

	src, err := identity.NewFileSource(context.Background(), cfg)
	if err != nil {
		log.Fatal(err)
	}
	defer src.Close()

	current, err := src.GetX509SVID()
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(current.ID)
	_, err = src.GetX509BundleForTrustDomain(ca.TrustDomain())
	fmt.Println("bundle for example.org:", err == nil)
	// Output:
	// spiffe://example.org/ns/default/sa/payments
	// bundle for example.org: true
}

func ExampleFileSource_Updated() {
	ca, _ := identitytest.NewCA("example.org")
	first, _ := ca.Issue("spiffe://example.org/ns/default/sa/payments", time.Hour)
	dir, _ := os.MkdirTemp("", "certs")
	defer os.RemoveAll(dir)
	cfg, _ := ca.WriteFiles(dir, first)
	cfg.RefreshInterval = 10 * time.Millisecond

	src, err := identity.NewFileSource(context.Background(), cfg)
	if err != nil {
		log.Fatal(err)
	}
	defer src.Close()

	// Take the channel before changing the files, so the reload cannot be missed.
	updated := src.Updated()
	rotated, _ := ca.Issue("spiffe://example.org/ns/default/sa/payments", time.Hour)
	if _, err := ca.WriteFiles(dir, rotated); err != nil {
		log.Fatal(err)
	}
	<-updated

	current, _ := src.GetX509SVID()
	fmt.Println("rotated:", current.Certificates[0].SerialNumber.Cmp(rotated.Certificates[0].SerialNumber) == 0)
	// Output: rotated: true
}

func ExampleStaticSource_Set() {
	ca, _ := identitytest.NewCA("example.org")
	svid, _ := ca.Issue("spiffe://example.org/ns/default/sa/checkout", time.Hour)
	src := identity.NewStaticSource(svid, ca.Bundle())

	updated := src.Updated()
	renewed, _ := ca.Issue("spiffe://example.org/ns/default/sa/checkout", time.Hour)
	src.Set(renewed, ca.Bundle())
	<-updated

	current, _ := src.GetX509SVID()
	fmt.Println(current.ID, current == renewed)
	// Output: spiffe://example.org/ns/default/sa/checkout true
}

func ExampleNewWorkloadAPISource() {
	// A stand-in for the SPIRE agent; in production the address is the
	// agent's socket, or "" to read $SPIFFE_ENDPOINT_SOCKET.
	ca, _ := identitytest.NewCA("example.org")
	dir, _ := os.MkdirTemp("", "spire")
	defer os.RemoveAll(dir)
	agent, err := identitytest.NewWorkloadAPI(filepath.Join(dir, "agent.sock"))
	if err != nil {
		log.Fatal(err)
	}
	defer agent.Close()
	svid, _ := ca.Issue("spiffe://example.org/ns/default/sa/payments", time.Hour)
	if err := agent.Push(svid, ca.Bundle()); err != nil {
		log.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	src, err := identity.NewWorkloadAPISource(ctx, agent.Addr(), identity.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		log.Fatal(err) // names the socket and the last failure, e.g. PermissionDenied
	}
	defer src.Close()

	// Take the channel before the agent rotates, so the push cannot be missed.
	updated := src.Updated()
	rotated, _ := ca.Issue("spiffe://example.org/ns/default/sa/payments", time.Hour)
	_ = agent.Push(rotated, ca.Bundle())
	<-updated

	current, _ := src.GetX509SVID()
	fmt.Println(current.ID, current.Certificates[0].SerialNumber.Cmp(rotated.Certificates[0].SerialNumber) == 0)
	// Output: spiffe://example.org/ns/default/sa/payments true
}

func ExampleNewCSRSource() {
	ctx := context.Background()
	// The embedded control plane is a CA speaking Istio's certificate API.
	cp, err := controlplane.New(ctx, controlplane.WithTrustDomain("example.org"))
	if err != nil {
		log.Fatal(err)
	}
	defer cp.Close()
	token, err := cp.WorkloadToken(controlplane.Workload{Name: "payments-v1", Namespace: "shop", ServiceAccount: "payments"})
	if err != nil {
		log.Fatal(err)
	}

	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(cp.RootPEM())
	src, err := identity.NewCSRSource(ctx, identity.CSRConfig{
		Addr:           cp.Addr(),
		Token:          func(context.Context) (string, error) { return token, nil },
		TrustDomain:    "example.org",
		Namespace:      "shop",
		ServiceAccount: "payments",
		TTL:            time.Hour, // renewed after 30 minutes
		RootPEM:        cp.RootPEM(),
		// The control plane's port serves TLS with a certificate of its CA.
		TLS: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12},
	}, identity.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		log.Fatal(err)
	}
	defer src.Close()

	svid, err := src.GetX509SVID()
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(svid.ID)
	// Output: spiffe://example.org/ns/shop/sa/payments
}

func ExampleRenewalTime() {
	issued := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	cert := &x509.Certificate{NotBefore: issued, NotAfter: issued.Add(24 * time.Hour)}
	fmt.Println(identity.RenewalTime(cert))
	// Output: 2026-01-01 12:00:00 +0000 UTC
}
