package xdsclient_test

import (
	"fmt"

	"mesh/xdsclient"
)

// A Secret prints, logs and dumps without its private key.
func ExampleSecret_String() {
	s := &xdsclient.Secret{Name: "default", Certificate: &xdsclient.TLSCertificate{
		ChainPEM: []byte("-----BEGIN CERTIFICATE-----\n..."),
		KeyPEM:   []byte("-----BEGIN PRIVATE KEY-----\n..."),
	}}
	fmt.Println(s)
	fmt.Printf("%+v\n", *s.Certificate)
	// Output:
	// Secret{Name: "default", Certificate: TLSCertificate{ChainPEM: 31 bytes, KeyPEM: [redacted]}}
	// TLSCertificate{ChainPEM: 31 bytes, KeyPEM: [redacted]}
}

// TLS contexts that name SDS secrets decode to references whose Provider
// is SDSProviderName of the secret: a transport.Providers entry under that
// name serves the secret to handshakes.
func ExampleSDSProviderName() {
	ref := xdsclient.CertificateRef{Provider: xdsclient.SDSProviderName("ROOTCA"), Certificate: "ROOTCA", SDS: true}
	fmt.Println(ref.Provider, ref.SDS)
	// Output:
	// sds:ROOTCA true
}
