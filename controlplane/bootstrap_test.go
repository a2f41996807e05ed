package controlplane

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"mesh/internal/testutil"
)

func TestWriteBootstrap(t *testing.T) {
	s := newTestServer(t)
	dir := t.TempDir()
	path, err := s.WriteBootstrap(dir, Workload{
		Name: "payments-v1-abc", Service: "payments", Port: 8080,
		Labels: map[string]string{"version": "v1"}, Address: "127.0.0.1:9001",
	})
	if err != nil {
		t.Fatal(err)
	}
	if path != filepath.Join(dir, BootstrapFile) {
		t.Fatalf("path = %s", path)
	}
	// The key, the token and the bootstrap (which names the token) are
	// secrets: only the workload may read them.
	modes := map[string]os.FileMode{KeyFile: 0o600, CertChainFile: 0o644, RootCertFile: 0o644, BootstrapFile: 0o600, TokenFile: 0o600}
	for name, want := range modes {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s mode = %v, want %v", name, fi.Mode().Perm(), want)
		}
	}
	if _, err := tls.LoadX509KeyPair(filepath.Join(dir, CertChainFile), filepath.Join(dir, KeyFile)); err != nil {
		t.Fatalf("written key pair: %v", err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var b struct {
		XDSServers []struct {
			ServerURI    string `json:"server_uri"`
			ChannelCreds []struct {
				Type   string            `json:"type"`
				Config map[string]string `json:"config"`
			} `json:"channel_creds"`
			CallCreds []struct {
				Type   string            `json:"type"`
				Config map[string]string `json:"config"`
			} `json:"call_creds"`
			ServerFeatures []string `json:"server_features"`
		} `json:"xds_servers"`
		Node struct {
			ID       string         `json:"id"`
			Metadata map[string]any `json:"metadata"`
			Locality map[string]any `json:"locality"`
		} `json:"node"`
		CertificateProviders map[string]struct {
			PluginName string            `json:"plugin_name"`
			Config     map[string]string `json:"config"`
		} `json:"certificate_providers"`
		Template string `json:"server_listener_resource_name_template"`
	}
	if err := json.Unmarshal(data, &b); err != nil {
		t.Fatalf("bootstrap is not JSON: %v", err)
	}
	if len(b.XDSServers) != 1 || b.XDSServers[0].ServerURI != s.Addr() || len(b.XDSServers[0].ChannelCreds) != 1 ||
		strings.Join(b.XDSServers[0].ServerFeatures, ",") != "xds_v3" {
		t.Fatalf("xds_servers = %+v", b.XDSServers)
	}
	// gRFC A65 TLS trusting the CA, and gRFC A97 call creds with the token.
	if cc := b.XDSServers[0].ChannelCreds[0]; cc.Type != "tls" || cc.Config["ca_certificate_file"] != filepath.Join(dir, RootCertFile) ||
		cc.Config["certificate_file"] != filepath.Join(dir, CertChainFile) || cc.Config["private_key_file"] != filepath.Join(dir, KeyFile) {
		t.Fatalf("channel_creds = %+v", b.XDSServers[0].ChannelCreds)
	}
	if cc := b.XDSServers[0].CallCreds; len(cc) != 1 || cc[0].Type != "jwt_token_file" || cc[0].Config["jwt_token_file"] != filepath.Join(dir, TokenFile) {
		t.Fatalf("call_creds = %+v", cc)
	}
	if want := "sidecar~127.0.0.1~payments-v1-abc.default~default.svc.cluster.local"; b.Node.ID != want {
		t.Fatalf("node id = %q, want %q", b.Node.ID, want)
	}
	md := b.Node.Metadata
	for k, want := range map[string]string{
		metaNamespace: "default", metaServiceAccount: "default", metaWorkloadName: "payments-v1-abc",
		metaGenerator: "grpc", metaService: "payments.default.svc.cluster.local:8080", metaAddress: "127.0.0.1:9001",
		metaClusterID: "Kubernetes",
	} {
		if md[k] != want {
			t.Errorf("metadata %s = %v, want %q", k, md[k], want)
		}
	}
	if labels, ok := md[metaLabels].(map[string]any); !ok || labels["version"] != "v1" {
		t.Errorf("LABELS = %#v", md[metaLabels])
	}
	if b.Node.Locality == nil {
		t.Error("locality missing")
	}
	p := b.CertificateProviders["default"]
	if p.PluginName != "file_watcher" || p.Config["certificate_file"] != filepath.Join(dir, CertChainFile) ||
		p.Config["private_key_file"] != filepath.Join(dir, KeyFile) || p.Config["ca_certificate_file"] != filepath.Join(dir, RootCertFile) ||
		p.Config["refresh_interval"] != "900s" {
		t.Fatalf("certificate_providers = %+v", b.CertificateProviders)
	}
	if b.Template != "xds.istio.io/grpc/lds/inbound/%s" {
		t.Fatalf("template = %q", b.Template)
	}
}

// TestBootstrapClusterID: CLUSTER_ID defaults to Kubernetes, follows
// WithClusterID, and a workload's own ClusterID wins; "unknown", which
// Kiali discards, is refused.
func TestBootstrapClusterID(t *testing.T) {
	clusterOf := func(s *Server, w Workload) any {
		t.Helper()
		data, err := s.BootstrapJSON(w, t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		var b struct {
			Node struct {
				Metadata map[string]any `json:"metadata"`
			} `json:"node"`
		}
		if err := json.Unmarshal(data, &b); err != nil {
			t.Fatal(err)
		}
		return b.Node.Metadata[metaClusterID]
	}
	w := Workload{Name: "checkout"}
	if got := clusterOf(newTestServer(t), w); got != DefaultClusterID {
		t.Errorf("default CLUSTER_ID = %v, want %q", got, DefaultClusterID)
	}
	east := newTestServer(t, WithClusterID("east"))
	if got := clusterOf(east, w); got != "east" {
		t.Errorf("WithClusterID(east): CLUSTER_ID = %v", got)
	}
	w.ClusterID = "west"
	if got := clusterOf(east, w); got != "west" {
		t.Errorf("Workload.ClusterID west: CLUSTER_ID = %v", got)
	}
	w.ClusterID = "unknown"
	if _, err := east.BootstrapJSON(w, t.TempDir()); err == nil || !strings.Contains(err.Error(), "cluster ID") {
		t.Errorf("ClusterID unknown: err = %v, want one naming the cluster ID", err)
	}
	if _, err := New(t.Context(), WithClusterID("")); err == nil || !strings.Contains(err.Error(), "WithClusterID") {
		t.Errorf("WithClusterID(\"\"): err = %v", err)
	}
}

func TestWorkloadValidate(t *testing.T) {
	for _, tc := range []struct {
		w    Workload
		want string
	}{
		{Workload{}, "name: required"},
		{Workload{Name: "Bad_Name"}, "name: must be a lowercase DNS name"},
		{Workload{Name: "a", Service: "payments"}, "port 0"},
		{Workload{Name: "a", Port: 80}, "set without service"},
		{Workload{Name: "a", Service: "p.q", Port: 80}, "short lowercase DNS label"},
		{Workload{Name: "a", Address: "localhost:80"}, "not an IP address"},
		{Workload{Name: "a", Namespace: "NS"}, "namespace"},
	} {
		err := tc.w.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Validate(%+v) = %v, want %q", tc.w, err, tc.want)
		}
	}
	if err := (Workload{Name: "a", Service: "payments", Port: 8080}).Validate(); err != nil {
		t.Fatalf("valid workload: %v", err)
	}
}

func TestIssueSVIDVerifiesAgainstRoot(t *testing.T) {
	s := newTestServer(t, WithTrustDomain("example.org"), WithCertTTL(time.Hour))
	chainPEM, keyPEM, err := s.IssueSVID("shop", "payments")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tls.X509KeyPair(chainPEM, keyPEM); err != nil {
		t.Fatalf("key pair: %v", err)
	}
	leaf, err := parseCertPEM(chainPEM)
	if err != nil {
		t.Fatal(err)
	}
	roots := testutil.RootPool(t, s.RootPEM())
	for _, usage := range []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth} {
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{usage}}); err != nil {
			t.Fatalf("verify for %v: %v", usage, err)
		}
	}
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != "spiffe://example.org/ns/shop/sa/payments" {
		t.Fatalf("URIs = %v", leaf.URIs)
	}
	if life := leaf.NotAfter.Sub(leaf.NotBefore); life > time.Hour+2*time.Minute {
		t.Fatalf("lifetime %v exceeds ttl", life)
	}
	if _, _, err := s.IssueSVID("shop", "bad/sa"); err == nil {
		t.Fatal("IssueSVID accepted a service account with a slash")
	}
}

func TestWithCA(t *testing.T) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "test root"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyDER, _ := x509.MarshalECPrivateKey(key)
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER})

	s := newTestServer(t, WithCA(certPEM, keyPEM))
	if string(s.RootPEM()) != string(certPEM) {
		t.Fatal("RootPEM is not the given CA")
	}
	chain, _, err := s.IssueSVID("default", "default")
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := parseCertPEM(chain)
	if leaf.NotAfter.After(tmpl.NotAfter) {
		t.Fatal("leaf outlives its CA")
	}

	other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	otherDER, _ := x509.MarshalECPrivateKey(other)
	otherPEM := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: otherDER})
	if _, err := New(testutil.Context(t), WithCA(certPEM, otherPEM)); err == nil || !strings.Contains(err.Error(), "does not match") {
		t.Fatalf("mismatched key: %v", err)
	}
	if _, err := New(testutil.Context(t), WithCA([]byte("junk"), keyPEM)); err == nil || !strings.Contains(err.Error(), "ca certificate") {
		t.Fatalf("junk cert: %v", err)
	}
	if _, err := New(testutil.Context(t), WithTrustDomain("Not A Domain")); err == nil || !strings.Contains(err.Error(), "trust domain") {
		t.Fatalf("bad trust domain: %v", err)
	}
}
