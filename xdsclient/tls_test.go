package xdsclient_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"mesh/internal/testutil"
	"mesh/xdsclient"
	"mesh/xdsclient/xdstest"
)

type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  []byte
}

func newTestCA(t *testing.T) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "mesh test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{cert: cert, key: key, pem: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}
}

// issue returns a leaf certificate valid for 127.0.0.1, for both ends.
func (ca *testCA) issue(t *testing.T, serial int64) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(serial),
		Subject:      pkix.Name{CommonName: "leaf"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
}

// newMTLSServer is an xDS server that requires client certificates from
// ca, serving one cluster's endpoints.
func newMTLSServer(t *testing.T, ca *testCA) *xdstest.Server {
	t.Helper()
	serverCert, serverKey := ca.issue(t, 2)
	pair, err := tls.X509KeyPair(serverCert, serverKey)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.cert)
	srv := xdstest.NewTLSServer(t, &tls.Config{
		Certificates: []tls.Certificate{pair},
		ClientCAs:    pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		MinVersion:   tls.VersionTLS12,
	})
	setMesh(t, srv, []xdsclient.ClusterWeight{{Name: clusterV1, Weight: 1}}, "127.0.0.1:8080")
	return srv
}

// watchOverFileTLS watches clusterV1's endpoints on srv with "tls"
// channel creds read from ca.pem, cert.pem and key.pem in dir.
func watchOverFileTLS(t *testing.T, srv *xdstest.Server, dir string) *events[*xdsclient.Endpoints] {
	t.Helper()
	cfg, _ := json.Marshal(map[string]string{
		"ca_certificate_file": filepath.Join(dir, "ca.pem"),
		"certificate_file":    filepath.Join(dir, "cert.pem"),
		"private_key_file":    filepath.Join(dir, "key.pem"),
	})
	bs := srv.Bootstrap(nodeID)
	bs.Servers[0].ChannelCreds = []xdsclient.ChannelCreds{{Type: xdsclient.CredsTLS, Config: cfg}}
	c, err := xdsclient.New(bs, xdsclient.WithBackoff(fastBackoff))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	eds := newEvents[*xdsclient.Endpoints]()
	c.WatchEndpoints(clusterV1, eds.fn)
	return eds
}

func TestMutualTLSChannelCreds(t *testing.T) {
	ctx := testutil.Context(t)
	ca := newTestCA(t)
	srv := newMTLSServer(t, ca)
	dir := t.TempDir()
	clientCert, clientKey := ca.issue(t, 3)
	files := map[string][]byte{"ca.pem": ca.pem, "cert.pem": clientCert, "key.pem": clientKey}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	eds := watchOverFileTLS(t, srv, dir)
	if ev := next(ctx, t, eds, nil); !isValue(ev) {
		t.Fatalf("event over mTLS = %+v", ev)
	}

	// Without a client certificate the server refuses the stream, and
	// watchers hear it as a stream failure.
	noCert, _ := json.Marshal(map[string]string{"ca_certificate_file": filepath.Join(dir, "ca.pem")})
	bs2 := srv.Bootstrap(nodeID)
	bs2.Servers[0].ChannelCreds = []xdsclient.ChannelCreds{{Type: xdsclient.CredsTLS, Config: noCert}}
	c2, err := xdsclient.New(bs2, xdsclient.WithBackoff(fastBackoff))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c2.Close() })
	eds2 := newEvents[*xdsclient.Endpoints]()
	c2.WatchEndpoints(clusterV1, eds2.fn)
	if ev := next(ctx, t, eds2, nil); !errors.Is(ev.Err, xdsclient.ErrStreamFailed) {
		t.Fatalf("event without client cert = %+v, want ErrStreamFailed", ev)
	}
}

func TestNewRejectsUnreadableTLSFiles(t *testing.T) {
	bs := &xdsclient.Bootstrap{Servers: []xdsclient.ServerConfig{{URI: "127.0.0.1:1", ChannelCreds: []xdsclient.ChannelCreds{{
		Type: xdsclient.CredsTLS, Config: json.RawMessage(`{"ca_certificate_file": "/nonexistent/ca.pem"}`)}}}}}
	_, err := xdsclient.New(bs)
	if err == nil || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("New error = %v, want a wrapped not-exist error", err)
	}
	const want = "bootstrap: xds_servers[0].channel_creds[0].config.ca_certificate_file"
	if got := err.Error(); len(got) < len(want) || got[:len(want)] != want {
		t.Fatalf("New error = %q, want prefix %q", got, want)
	}
}
