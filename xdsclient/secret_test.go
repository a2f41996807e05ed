package xdsclient_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	corepb "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlspb "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	statuspb "github.com/envoyproxy/go-control-plane/envoy/service/status/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"

	"mesh/internal/testutil"
	"mesh/xdsclient"
	"mesh/xdsclient/xdstest"
)

func setSecrets(t *testing.T, srv *xdstest.Server, secrets ...types.Resource) string {
	t.Helper()
	return srv.SetSnapshot(t, nodeID, map[resource.Type][]types.Resource{resource.SecretType: secrets})
}

func TestWatchSecretOverADS(t *testing.T) {
	ctx := testutil.Context(t)
	ca := newTestCA(t)
	chain1, key1 := ca.issue(t, 10)
	srv := xdstest.NewServer(t)
	setSecrets(t, srv,
		xdstest.CertificateSecret("default", chain1, key1),
		xdstest.SPIFFEBundleSecret("ROOTCA", map[string][]byte{"cluster.local": ca.pem}))
	log, logs := bufferLogger()
	cachePath := filepath.Join(t.TempDir(), "xds-cache")
	c := newClient(t, srv, xdsclient.WithLogger(log), xdsclient.WithCache(cachePath))

	certs, roots := newEvents[*xdsclient.Secret](), newEvents[*xdsclient.Secret]()
	c.WatchSecret("default", certs.fn)
	c.WatchSecret("ROOTCA", roots.fn)
	ev := next(ctx, t, certs, nil)
	if !isValue(ev) || ev.Resource.Name != "default" || !bytes.Equal(ev.Resource.Certificate.ChainPEM, chain1) || !bytes.Equal(ev.Resource.Certificate.KeyPEM, key1) {
		t.Fatalf("default secret event = %v", ev)
	}
	ev = next(ctx, t, roots, nil)
	if !isValue(ev) || !bytes.Equal(ev.Resource.Validation.BundleFor("cluster.local"), ca.pem) {
		t.Fatalf("ROOTCA secret event = %v", ev)
	}
	// Dump shows the secret in force without its key: keys never leave
	// the process (admin pages read Dump); the watcher's copy keeps it.
	dumped := false
	for _, rs := range c.Dump() {
		if s, ok := rs.Value.(*xdsclient.Secret); ok && rs.Name == "default" {
			dumped = true
			if s.Certificate == nil || !bytes.Equal(s.Certificate.ChainPEM, chain1) || s.Certificate.KeyPEM != nil {
				t.Errorf("Dump's default secret = %v, want chain without key", s)
			}
		}
	}
	if !dumped {
		t.Errorf("Dump has no default secret value: %+v", c.Dump())
	}

	// A pushed rotation reaches the watcher.
	chain2, key2 := ca.issue(t, 11)
	setSecrets(t, srv,
		xdstest.CertificateSecret("default", chain2, key2),
		xdstest.SPIFFEBundleSecret("ROOTCA", map[string][]byte{"cluster.local": ca.pem}))
	if ev := next(ctx, t, certs, nil); !isValue(ev) || !bytes.Equal(ev.Resource.Certificate.ChainPEM, chain2) {
		t.Fatalf("rotated secret event = %v", ev)
	}

	// A bad version is NACKed, names the field, and keeps the last good.
	bad := xdstest.CertificateSecret("default", chain2, key1) // key of another certificate
	version := setSecrets(t, srv, bad, xdstest.SPIFFEBundleSecret("ROOTCA", map[string][]byte{"cluster.local": ca.pem}))
	ev = next(ctx, t, certs, nil)
	if !errors.Is(ev.Err, xdsclient.ErrResourceRejected) || !strings.Contains(ev.Err.Error(), `secret "default": tls_certificate.private_key: does not form a key pair`) {
		t.Fatalf("bad secret event = %v", ev)
	}
	nack, err := srv.WaitForRequest(ctx, func(r *discoverypb.DiscoveryRequest) bool {
		return r.GetTypeUrl() == xdsclient.TypeURLSecret && r.GetErrorDetail() != nil && r.GetResponseNonce() != ""
	})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(nack.GetErrorDetail().GetMessage(), "PRIVATE KEY") {
		t.Fatalf("NACK leaks a key: %s", nack.GetErrorDetail().GetMessage())
	}
	if nack.GetVersionInfo() == version {
		t.Fatalf("NACK carries the rejected version %q", version)
	}
	rs := statusOf(t, c, "secret", "default")
	if rs.Status != xdsclient.StatusNACKed || rs.TypeURL != xdsclient.TypeURLSecret {
		t.Fatalf("status = %+v", rs)
	}

	// No private key in logs, Dump, CSDS or the cache file.
	csds := fetchCSDS(ctx, t, c)
	var sawRedacted bool
	for _, g := range csds.GetConfig()[0].GetGenericXdsConfigs() {
		if g.GetTypeUrl() != xdsclient.TypeURLSecret || g.GetName() != "default" {
			continue
		}
		s := &tlspb.Secret{}
		if err := proto.Unmarshal(g.GetXdsConfig().GetValue(), s); err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(s.GetTlsCertificate().GetCertificateChain().GetInlineBytes(), chain2) {
			t.Fatalf("CSDS lost the chain: %v", s.GetTlsCertificate().GetCertificateChain())
		}
		sawRedacted = s.GetTlsCertificate().GetPrivateKey().GetInlineString() == "[redacted]"
	}
	if !sawRedacted {
		t.Fatal("CSDS does not show the default secret with a redacted key")
	}
	_ = c.Close() // flushes the cache file
	cached, err := os.ReadFile(cachePath)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(cached), xdsclient.TypeURLSecret) {
		t.Fatalf("the cache file holds secrets:\n%s", cached)
	}
	for where, data := range map[string]string{
		"logs": logs.String(), "csds": csds.String(), "cache file": string(cached),
	} {
		for _, k := range [][]byte{key1, key2} {
			if strings.Contains(data, string(k)) || strings.Contains(data, string(bytes.TrimSpace(k)[30:80])) {
				t.Fatalf("%s leak a private key:\n%s", where, data)
			}
		}
	}
}

func fetchCSDS(ctx context.Context, t *testing.T, c *xdsclient.Client) *statuspb.ClientStatusResponse {
	t.Helper()
	resp, err := csdsClient(t, c).FetchClientStatus(ctx, &statuspb.ClientStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

func TestClusterWithSDSReferencesDecodes(t *testing.T) {
	ctx := testutil.Context(t)
	srv := xdstest.NewServer(t)
	cl := xdstest.EDSCluster(clusterV1, true)
	up := &tlspb.UpstreamTlsContext{CommonTlsContext: &tlspb.CommonTlsContext{
		TlsCertificateSdsSecretConfigs: []*tlspb.SdsSecretConfig{xdstest.SDSSecretConfig("default")},
		ValidationContextType: &tlspb.CommonTlsContext_CombinedValidationContext{CombinedValidationContext: &tlspb.CommonTlsContext_CombinedCertificateValidationContext{
			DefaultValidationContext:         &tlspb.CertificateValidationContext{},
			ValidationContextSdsSecretConfig: xdstest.SDSSecretConfig("ROOTCA"),
		}},
	}}
	cl.TransportSocket.ConfigType = &corepb.TransportSocket_TypedConfig{TypedConfig: xdstest.MustAny(up)}
	srv.SetSnapshot(t, nodeID, map[resource.Type][]types.Resource{resource.ClusterType: {cl}})
	c := newClient(t, srv)
	cds := newEvents[*xdsclient.Cluster]()
	c.WatchCluster(clusterV1, cds.fn)
	ev := next(ctx, t, cds, nil)
	if !isValue(ev) {
		t.Fatalf("cluster event = %+v", ev)
	}
	tls := ev.Resource.TLS
	if tls.Identity == nil || *tls.Identity != (xdsclient.CertificateRef{Provider: xdsclient.SDSProviderName("default"), Certificate: "default", SDS: true}) ||
		tls.Roots != (xdsclient.CertificateRef{Provider: "sds:ROOTCA", Certificate: "ROOTCA", SDS: true}) {
		t.Fatalf("cluster TLS = %+v identity %+v", tls, tls.Identity)
	}
}
