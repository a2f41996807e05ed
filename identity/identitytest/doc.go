// Package identitytest issues SPIFFE SVIDs from a throwaway in-memory CA, for
// tests of code that uses mesh identities; like net/http/httptest, it is
// meant for tests and examples, not production.
//
//	ca, err := identitytest.NewCA("example.org")
//	if err != nil {
//		t.Fatal(err)
//	}
//	svid, err := ca.Issue("spiffe://example.org/ns/default/sa/payments", time.Hour)
//	if err != nil {
//		t.Fatal(err)
//	}
//	src := identity.NewStaticSource(svid, ca.Bundle())
//
// WriteFiles lays an SVID out as istio-agent does (cert-chain.pem, key.pem,
// root-cert.pem), ready for identity.NewFileSource. WorkloadAPI plays a SPIRE
// agent for workloadapi.NewSource, and SignCSR is the signing half
// of a CA for csr.NewSource.
package identitytest
