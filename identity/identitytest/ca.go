package identitytest

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"mesh/identity"
)

// File names istio-agent uses for proxyless gRPC workloads.
const (
	CertChainFile = "cert-chain.pem"
	KeyFile       = "key.pem"
	RootCertFile  = "root-cert.pem"
)

// backdate keeps freshly issued certificates valid on peers whose clocks
// run a little behind, as Istio's CA does.
const backdate = time.Minute

// CA is a self-signed root for one trust domain. It is safe for concurrent
// use.
type CA struct {
	td   spiffeid.TrustDomain
	cert *x509.Certificate
	key  crypto.Signer
}

// NewCA creates a root CA for trustDomain (e.g. "example.org").
func NewCA(trustDomain string) (*CA, error) {
	td, err := spiffeid.TrustDomainFromString(trustDomain)
	if err != nil {
		return nil, fmt.Errorf("identitytest: trust domain %q: %w", trustDomain, err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("identitytest: generating CA key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{"mesh test CA"}, CommonName: td.Name()},
		URIs:                  []*url.URL{td.ID().URL()},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("identitytest: creating CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("identitytest: parsing CA certificate: %w", err)
	}
	return &CA{td: td, cert: cert, key: key}, nil
}

// TrustDomain returns the CA's trust domain.
func (ca *CA) TrustDomain() spiffeid.TrustDomain { return ca.td }

// Root returns the CA certificate.
func (ca *CA) Root() *x509.Certificate { return ca.cert }

// Bundle returns a new bundle holding the CA certificate.
func (ca *CA) Bundle() *x509bundle.Bundle {
	return x509bundle.FromX509Authorities(ca.td, []*x509.Certificate{ca.cert})
}

// Issue returns an SVID for spiffeID, valid for ttl, with an optional list
// of DNS SANs. spiffeID must belong to the CA's trust domain.
func (ca *CA) Issue(spiffeID string, ttl time.Duration, dnsNames ...string) (*x509svid.SVID, error) {
	if ttl <= 0 {
		return nil, fmt.Errorf("identitytest: ttl %v must be positive", ttl)
	}
	now := time.Now()
	return ca.IssueBetween(spiffeID, now.Add(-backdate), now.Add(ttl), dnsNames...)
}

// IssueBetween is Issue with an explicit validity window, for tests of
// certificates that are expired or not yet valid.
func (ca *CA) IssueBetween(spiffeID string, notBefore, notAfter time.Time, dnsNames ...string) (*x509svid.SVID, error) {
	id, err := spiffeid.FromString(spiffeID)
	if err != nil {
		return nil, fmt.Errorf("identitytest: SPIFFE ID %q: %w", spiffeID, err)
	}
	if id.TrustDomain() != ca.td {
		return nil, fmt.Errorf("identitytest: SPIFFE ID %q is not in trust domain %q", spiffeID, ca.td.Name())
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("identitytest: generating key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		URIs:         []*url.URL{id.URL()},
		DNSNames:     dnsNames,
		NotBefore:    notBefore,
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		return nil, fmt.Errorf("identitytest: issuing %s: %w", id, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("identitytest: parsing certificate of %s: %w", id, err)
	}
	return &x509svid.SVID{ID: id, Certificates: []*x509.Certificate{cert}, PrivateKey: key}, nil
}

// WriteFiles writes svid and the CA's root into dir as cert-chain.pem,
// key.pem and root-cert.pem, and returns the matching identity.FileConfig.
// Each file is replaced atomically (write, then rename), so a poller sees
// either the old or the new content of a file, never half of it.
func (ca *CA) WriteFiles(dir string, svid *x509svid.SVID) (identity.FileConfig, error) {
	certPEM, keyPEM, err := svid.Marshal()
	if err != nil {
		return identity.FileConfig{}, fmt.Errorf("identitytest: encoding SVID %s: %w", svid.ID, err)
	}
	rootPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.cert.Raw})
	cfg := identity.FileConfig{
		CertFile: filepath.Join(dir, CertChainFile),
		KeyFile:  filepath.Join(dir, KeyFile),
		CAFile:   filepath.Join(dir, RootCertFile),
	}
	for _, f := range []struct {
		path string
		data []byte
	}{{cfg.CertFile, certPEM}, {cfg.KeyFile, keyPEM}, {cfg.CAFile, rootPEM}} {
		if err := WriteFileAtomic(f.path, f.data); err != nil {
			return identity.FileConfig{}, err
		}
	}
	return cfg, nil
}

// WriteFileAtomic replaces path with data by writing a temporary file in
// the same directory and renaming it over path.
func WriteFileAtomic(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("identitytest: writing %s: %w", path, err)
	}
	_, werr := tmp.Write(data)
	cerr := tmp.Close()
	if werr == nil {
		werr = cerr
	}
	if werr == nil {
		werr = os.Chmod(tmp.Name(), 0o600)
	}
	if werr == nil {
		werr = os.Rename(tmp.Name(), path)
	}
	if werr != nil {
		_ = os.Remove(tmp.Name())
		return fmt.Errorf("identitytest: writing %s: %w", path, werr)
	}
	return nil
}

func newSerial() (*big.Int, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("identitytest: generating serial number: %w", err)
	}
	return serial.Add(serial, big.NewInt(1)), nil
}

// SignCSR issues a certificate for the public key and SPIFFE ID of a PEM or
// DER certificate signing request, valid for ttl, the way a CA serving
// IstioCertificateService does once it has authenticated the caller. The
// request must be signed by its key and carry exactly one URI SAN, a SPIFFE
// ID in the CA's trust domain.
func (ca *CA) SignCSR(csr []byte, ttl time.Duration) (*x509.Certificate, error) {
	if block, _ := pem.Decode(csr); block != nil {
		if block.Type != "CERTIFICATE REQUEST" {
			return nil, fmt.Errorf("identitytest: CSR: PEM block is %q, not CERTIFICATE REQUEST", block.Type)
		}
		csr = block.Bytes
	}
	req, err := x509.ParseCertificateRequest(csr)
	if err != nil {
		return nil, fmt.Errorf("identitytest: CSR: %w", err)
	}
	if err := req.CheckSignature(); err != nil {
		return nil, fmt.Errorf("identitytest: CSR: signature: %w", err)
	}
	if len(req.URIs) != 1 {
		return nil, fmt.Errorf("identitytest: CSR: has %d URI SANs, want one SPIFFE ID", len(req.URIs))
	}
	id, err := spiffeid.FromURI(req.URIs[0])
	if err != nil {
		return nil, fmt.Errorf("identitytest: CSR: URI SAN: %w", err)
	}
	if id.TrustDomain() != ca.td {
		return nil, fmt.Errorf("identitytest: CSR: SPIFFE ID %s is not in trust domain %q", id, ca.td.Name())
	}
	if ttl <= 0 {
		return nil, fmt.Errorf("identitytest: ttl %v must be positive", ttl)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		URIs:         []*url.URL{id.URL()},
		NotBefore:    now.Add(-backdate),
		NotAfter:     now.Add(ttl),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, req.PublicKey, ca.key)
	if err != nil {
		return nil, fmt.Errorf("identitytest: signing CSR for %s: %w", id, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("identitytest: parsing certificate of %s: %w", id, err)
	}
	return cert, nil
}

// KeyPEM returns the CA's private key, PEM-encoded (PKCS#8), for a control
// plane that is to sign with this CA (controlplane.WithCA).
func (ca *CA) KeyPEM() ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(ca.key)
	if err != nil {
		return nil, fmt.Errorf("identitytest: encoding CA key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// RootPEM returns the CA certificate in PEM form.
func (ca *CA) RootPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ca.cert.Raw})
}
