package identity

import (
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"mesh/identity/internal/source"
)

// parsePrivateKey returns the first private key of a PEM file, in PKCS#8,
// SEC 1 ("EC PRIVATE KEY") or PKCS#1 ("RSA PRIVATE KEY") form: istio-agent
// and common CAs write all three.
func parsePrivateKey(data []byte) (crypto.Signer, error) {
	for {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			return nil, errors.New("no PEM private key")
		}
		var (
			key any
			err error
		)
		switch block.Type {
		case "PRIVATE KEY":
			key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
		case "EC PRIVATE KEY":
			key, err = x509.ParseECPrivateKey(block.Bytes)
		case "RSA PRIVATE KEY":
			key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
		default:
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("invalid %s: %w", block.Type, err)
		}
		signer, ok := key.(crypto.Signer)
		if !ok {
			return nil, fmt.Errorf("unsupported private key type %T", key)
		}
		return signer, nil
	}
}

// pemSet is the raw content of the three files, kept to notice changes.
type pemSet struct {
	cert, key, ca []byte
}

func (p pemSet) equal(o pemSet) bool {
	return string(p.cert) == string(o.cert) && string(p.key) == string(o.key) && string(p.ca) == string(o.ca)
}

// parseSet turns the three files into an SVID and the bundle of its trust
// domain, checking that they belong together. Errors name the file at fault.
func parseSet(cfg FileConfig, raw pemSet, now time.Time) (*x509svid.SVID, *x509bundle.Bundle, error) {
	certs, err := source.ParseCertificates(raw.cert)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", cfg.CertFile, err)
	}
	leaf := certs[0]
	if len(leaf.URIs) == 0 {
		return nil, nil, fmt.Errorf("%s: certificate has no SPIFFE ID URI SAN", cfg.CertFile)
	}
	id, err := x509svid.IDFromCert(leaf)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: certificate SPIFFE ID: %w", cfg.CertFile, err)
	}
	if leaf.IsCA {
		return nil, nil, fmt.Errorf("%s: leaf certificate %s is a CA certificate", cfg.CertFile, id)
	}
	key, err := parsePrivateKey(raw.key)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", cfg.KeyFile, err)
	}
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(leaf.PublicKey) {
		return nil, nil, fmt.Errorf("%s: key does not match certificate in %s", cfg.KeyFile, cfg.CertFile)
	}
	roots, err := source.ParseCertificates(raw.ca)
	if err != nil {
		return nil, nil, fmt.Errorf("%s: %w", cfg.CAFile, err)
	}
	bundle := x509bundle.FromX509Authorities(id.TrustDomain(), roots)
	// A set caught mid-rotation (new cert, old roots) fails here rather
	// than at every peer.
	if _, _, err := x509svid.Verify(certs, bundle, x509svid.WithTime(now)); err != nil {
		return nil, nil, fmt.Errorf("%s: certificate of %s does not verify against %s: %w", cfg.CertFile, id, cfg.CAFile, err)
	}
	return &x509svid.SVID{ID: id, Certificates: certs, PrivateKey: key}, bundle, nil
}
