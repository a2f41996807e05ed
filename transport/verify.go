package transport

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"mesh/identity"
)

// certificateFrom returns a GetCertificate-style callback that fetches the
// current SVID from src on every handshake, so rotation needs no restart.
func certificateFrom(providerName string, src identity.Source) func() (*tls.Certificate, error) {
	return func() (*tls.Certificate, error) {
		svid, err := src.GetX509SVID()
		if err != nil {
			return nil, fmt.Errorf("certificate provider %q: %w", providerName, err)
		}
		if svid == nil || len(svid.Certificates) == 0 || svid.PrivateKey == nil {
			return nil, fmt.Errorf("certificate provider %q: SVID has no certificate or key", providerName)
		}
		chain := make([][]byte, len(svid.Certificates))
		for i, c := range svid.Certificates {
			chain[i] = c.Raw
		}
		return &tls.Certificate{Certificate: chain, PrivateKey: svid.PrivateKey, Leaf: svid.Certificates[0]}, nil
	}
}

// verifyChain verifies a peer's raw chain as an X509-SVID against the bundle
// of the peer's own trust domain, as found in roots.
func verifyChain(raw [][]byte, roots x509bundle.Source) (spiffeid.ID, *x509.Certificate, error) {
	id, chains, err := x509svid.ParseAndVerify(raw, roots)
	if err != nil {
		return spiffeid.ID{}, nil, err
	}
	return id, chains[0][0], nil
}

// lookupProvider finds a provider, naming the role it plays if missing.
func lookupProvider(providers Providers, name, role string) (identity.Source, error) {
	if providers == nil {
		return nil, fmt.Errorf("no certificate providers configured (%s provider %q)", role, name)
	}
	src, ok := providers.Provider(name)
	if !ok {
		return nil, fmt.Errorf("%s certificate provider %q not found", role, name)
	}
	return src, nil
}
