// Package identity provides a workload's SPIFFE identity: its X.509 SVID
// (certificate chain and private key) and the trust bundles used to verify
// peers. Sources implement go-spiffe's x509svid.Source and x509bundle.Source,
// so go-spiffe's tlsconfig helpers accept them directly.
//
// Quick start, with the files istio-agent writes for proxyless gRPC:
//
//	src, err := identity.NewFileSource(ctx, identity.FileConfig{
//		CertFile: "/etc/certs/cert-chain.pem",
//		KeyFile:  "/etc/certs/key.pem",
//		CAFile:   "/etc/certs/root-cert.pem",
//	})
//	if err != nil {
//		return err
//	}
//	defer src.Close()
//
//	svid, err := src.GetX509SVID() // the current SVID; reloaded when the files change
//	fmt.Println(svid.ID)           // spiffe://cluster.local/ns/default/sa/payments
//
// Consumers fetch the SVID on every TLS handshake, so a rotated certificate is
// used from the next connection on without a restart. Updated reports
// rotations to those who want to react to them.
//
// # Sources
//
//   - FileSource polls the PEM files istio-agent (or any agent) writes.
//   - workloadapi.Source (package mesh/identity/workloadapi) streams SVIDs
//     and bundles from a SPIFFE Workload API (a SPIRE agent) on
//     "unix:///path" or "tcp://ip:port".
//   - csr.Source (package mesh/identity/csr) is agentless: it makes its own
//     key, asks a CA speaking Istio's IstioCertificateService (istiod, or
//     mesh's embedded control plane) for a certificate with a bearer token,
//     and renews at half-life.
//   - SDSSource takes the SVID and roots from SDS secrets ("default",
//     "ROOTCA") pushed on the xDS stream (xdsclient.Client.WatchSecret);
//     every push rotates the next handshake's certificate.
//   - StaticSource holds what it is given, for tests.
//
// workloadapi and csr are packages of their own, so that a program that
// does not import them does not link the Workload API's protocol or
// Istio's API.
//
// RenewalTime tells when a certificate is due for replacement; a connection
// that must outlive its certificate can be re-established after it.
//
// Private keys stay in memory; only csr.Source writes one to disk, and only
// to the path given with csr.WithKeyFile (mode 0600). Keys and tokens are never
// logged.
package identity
