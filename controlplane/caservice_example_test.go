package controlplane_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"log"
	"net/url"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	securitypb "istio.io/api/security/v1alpha1"

	"mesh/controlplane"
)

// A workload proves its identity to the embedded CA with the token the
// control plane minted for it, and gets back an SVID for that identity.
// csr.NewSource (package mesh/identity/csr) does all of this, and renews.
func ExampleServer_WorkloadToken() {
	ctx := context.Background()
	cp, err := controlplane.New(ctx, controlplane.WithTrustDomain("example.org"))
	if err != nil {
		log.Fatal(err)
	}
	defer cp.Close()
	token, err := cp.WorkloadToken(controlplane.Workload{Name: "payments-v1", Namespace: "shop", ServiceAccount: "payments"})
	if err != nil {
		log.Fatal(err)
	}

	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	id := spiffeid.RequireFromString("spiffe://example.org/ns/shop/sa/payments")
	der, _ := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{id.URL()}}, key)
	csr := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der})

	// The control plane's port serves TLS with a certificate from its CA.
	roots := x509.NewCertPool()
	roots.AppendCertsFromPEM(cp.RootPEM())
	tlsCreds := credentials.NewTLS(&tls.Config{RootCAs: roots, ServerName: controlplane.CAServerName, MinVersion: tls.VersionTLS12})
	conn, err := grpc.NewClient(cp.Addr(), grpc.WithTransportCredentials(tlsCreds))
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	resp, err := securitypb.NewIstioCertificateServiceClient(conn).CreateCertificate(ctx,
		&securitypb.IstioCertificateRequest{Csr: string(csr), ValidityDuration: 3600})
	if err != nil {
		log.Fatal(err)
	}
	block, _ := pem.Decode([]byte(resp.CertChain[0]))
	leaf, _ := x509.ParseCertificate(block.Bytes)
	fmt.Println(leaf.URIs[0])
	fmt.Println("root last:", resp.CertChain[len(resp.CertChain)-1] == string(cp.RootPEM()))
	// Output:
	// spiffe://example.org/ns/shop/sa/payments
	// root last: true
}
