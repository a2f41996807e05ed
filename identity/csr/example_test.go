package csr_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"log"
	"log/slog"
	"time"

	"mesh/controlplane"
	"mesh/identity/csr"
)

func ExampleNewSource() {
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
	src, err := csr.NewSource(ctx, csr.Config{
		Addr:           cp.Addr(),
		Token:          func(context.Context) (string, error) { return token, nil },
		TrustDomain:    "example.org",
		Namespace:      "shop",
		ServiceAccount: "payments",
		TTL:            time.Hour, // renewed after 30 minutes
		RootPEM:        cp.RootPEM(),
		// The control plane's port serves TLS with a certificate of its CA.
		TLS: &tls.Config{RootCAs: roots, MinVersion: tls.VersionTLS12},
	}, csr.WithLogger(slog.New(slog.DiscardHandler)))
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
