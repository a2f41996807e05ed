package identity_test

import (
	"context"
	"crypto/x509"
	"fmt"
	"log"
	"os"
	"time"

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

func ExampleRenewalTime() {
	issued := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	cert := &x509.Certificate{NotBefore: issued, NotAfter: issued.Add(24 * time.Hour)}
	fmt.Println(identity.RenewalTime(cert))
	// Output: 2026-01-01 12:00:00 +0000 UTC
}
