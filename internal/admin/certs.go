package admin

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
)

// CertificateFromPEM describes the leaf of a PEM chain; anything but
// CERTIFICATE blocks is skipped, so no key can reach a page.
func CertificateFromPEM(chain []byte) (CertificateView, error) {
	var certs []*x509.Certificate
	for rest := chain; ; {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		if b.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return CertificateView{}, fmt.Errorf("certificate chain: %w", err)
		}
		certs = append(certs, c)
	}
	if len(certs) == 0 {
		return CertificateView{}, errors.New("certificate chain: no certificate")
	}
	return CertificateOf(certs, nil), nil
}

// CertificateOf describes chain's leaf and the roots that validate its
// peers.
func CertificateOf(chain, roots []*x509.Certificate) CertificateView {
	leaf := chain[0]
	v := CertificateView{Serial: leaf.SerialNumber.Text(16), NotBefore: leaf.NotBefore.UTC(),
		NotAfter: leaf.NotAfter.UTC(), ChainLength: len(chain)}
	if len(leaf.URIs) > 0 {
		v.SPIFFEID = leaf.URIs[0].String()
		v.TrustDomain = leaf.URIs[0].Host
	}
	for _, r := range roots {
		sum := sha256.Sum256(r.Raw)
		v.TrustBundle = append(v.TrustBundle, RootView{Subject: r.Subject.String(), Serial: r.SerialNumber.Text(16),
			NotAfter: r.NotAfter.UTC(), SHA256: hex.EncodeToString(sum[:])})
	}
	return v
}
