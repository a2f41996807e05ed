package shop

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"mesh"
	"mesh/controlplane"
	"mesh/xdsclient"
)

// LoadBootstrap reads the bootstrap in a workload's directory and, when
// certRefresh is set, makes its certificate files re-read that often.
func LoadBootstrap(dir string, certRefresh time.Duration) (*xdsclient.Bootstrap, error) {
	bs, err := xdsclient.LoadBootstrapFile(filepath.Join(dir, controlplane.BootstrapFile))
	if err != nil {
		return nil, err
	}
	if certRefresh > 0 {
		for name, p := range bs.CertificateProviders {
			if p.FileWatcher != nil {
				p.FileWatcher.RefreshInterval = certRefresh
				bs.CertificateProviders[name] = p
			}
		}
	}
	return bs, nil
}

// ServePayments serves Payments of version on a new loopback listener
// with a server made from m, until the test ends.
func ServePayments(tb testing.TB, m *mesh.Mesh, version string) net.Addr {
	tb.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	srv := m.NewGRPCServer()
	(&Payments{Version: version}).Register(srv)
	served := make(chan struct{})
	go func() {
		defer close(served)
		srv.Serve(lis)
	}()
	tb.Cleanup(func() {
		srv.Stop()
		<-served
	})
	return lis.Addr()
}

// WebHost and WebURL are where mesh HTTP clients reach the web service.
const (
	WebHost = "web.default.svc.cluster.local"
	WebURL  = "http://web.default.svc.cluster.local:8080/version"
)

// WebYAML routes the web service's subsets v1 and v2 by weight.
func WebYAML(v1Weight, v2Weight int) []byte { return SplitYAML(WebHost, v1Weight, v2Weight) }

// StartWeb joins workload web-<version> to cp's mesh (with opts added to
// its mesh's) and serves, over the mesh's HTTPServer, a handler answering
// with its version, until the test ends.
func StartWeb(tb testing.TB, ctx context.Context, cp *controlplane.Server, version string, opts ...mesh.Option) net.Addr {
	tb.Helper()
	wl := controlplane.Workload{Name: "web-" + version, Namespace: "default", ServiceAccount: "web", Service: "web", Port: 8080,
		Labels: map[string]string{"app": "web", "version": version}}
	path, err := cp.WriteBootstrap(filepath.Join(tb.TempDir(), wl.Name), wl)
	if err != nil {
		tb.Fatal(err)
	}
	m, err := mesh.New(ctx, append([]mesh.Option{mesh.WithBootstrapFile(path), mesh.WithLogger(TestLogger(tb).With("workload", wl.Name))}, opts...)...)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { m.Close() })
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	hs := m.NewHTTPServer(http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/peer" { // which connection the request came on
			io.WriteString(rw, r.RemoteAddr)
			return
		}
		io.WriteString(rw, version)
	}))
	served := make(chan struct{})
	go func() {
		defer close(served)
		hs.Serve(lis)
	}()
	tb.Cleanup(func() {
		hs.Close()
		<-served
	})
	return lis.Addr()
}

// GetVersion sends one GET to url and returns the body of a 200 answer.
func GetVersion(ctx context.Context, client *http.Client, url string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", fmt.Errorf("GET %s: reading body: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: status %d: %s", url, resp.StatusCode, body)
	}
	return string(body), nil
}

// TestCA is a root CA whose key a test holds, so that it can hand the key to
// a control plane (controlplane.WithCA) and also mint certificates the
// control plane would not, such as expired ones.
type TestCA struct {
	TrustDomain spiffeid.TrustDomain
	CertPEM     []byte
	KeyPEM      []byte
	cert        *x509.Certificate
	key         *ecdsa.PrivateKey
}

// NewTestCA makes a self-signed root for trustDomain, valid for a day.
func NewTestCA(trustDomain string) (*TestCA, error) {
	td, err := spiffeid.TrustDomainFromString(trustDomain)
	if err != nil {
		return nil, fmt.Errorf("test ca: trust domain %q: %w", trustDomain, err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("test ca: generating key: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(now.UnixNano()),
		Subject:               pkix.Name{CommonName: "mesh test root " + td.Name()},
		URIs:                  []*url.URL{td.ID().URL()},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(24 * time.Hour),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("test ca: self-signing: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("test ca: parsing: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("test ca: encoding key: %w", err)
	}
	return &TestCA{
		TrustDomain: td,
		CertPEM:     pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		KeyPEM:      pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
		cert:        cert,
		key:         key,
	}, nil
}

// Bundle is the CA's trust bundle.
func (ca *TestCA) Bundle() *x509bundle.Bundle {
	return x509bundle.FromX509Authorities(ca.TrustDomain, []*x509.Certificate{ca.cert})
}

// Issue mints an SVID for id valid from notBefore to notAfter, which may
// both lie in the past.
func (ca *TestCA) Issue(id spiffeid.ID, notBefore, notAfter time.Time) (*x509svid.SVID, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("test ca: generating key for %s: %w", id, err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()),
		URIs:         []*url.URL{id.URL()},
		NotBefore:    notBefore,
		NotAfter:     notAfter,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, key.Public(), ca.key)
	if err != nil {
		return nil, fmt.Errorf("test ca: issuing %s: %w", id, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("test ca: parsing certificate of %s: %w", id, err)
	}
	return &x509svid.SVID{ID: id, Certificates: []*x509.Certificate{cert}, PrivateKey: key}, nil
}
