package xdstest

import (
	"context"
	"maps"
	"slices"
	"strconv"
	"testing"

	corepb "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlspb "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
)

// SetSnapshot replaces nodeID's snapshot with res (keyed by type URL, e.g.
// resource.SecretType) under a new version, and returns that version. It
// is SetResources for any set of types, SDS secrets included.
func (s *Server) SetSnapshot(t testing.TB, nodeID string, res map[resource.Type][]types.Resource) string {
	t.Helper()
	s.mu.Lock()
	s.versions[nodeID]++
	version := strconv.Itoa(s.versions[nodeID])
	s.mu.Unlock()
	snap, err := cachev3.NewSnapshot(version, res)
	if err != nil {
		t.Fatalf("xdstest: snapshot: %v", err)
	}
	if err := s.cache.SetSnapshot(context.Background(), nodeID, snap); err != nil {
		t.Fatalf("xdstest: set snapshot: %v", err)
	}
	return version
}

// CertificateSecret is an SDS secret carrying a certificate chain and its
// private key inline, as istiod's "default" secret does.
func CertificateSecret(name string, chainPEM, keyPEM []byte) *tlspb.Secret {
	return &tlspb.Secret{Name: name, Type: &tlspb.Secret_TlsCertificate{TlsCertificate: &tlspb.TlsCertificate{
		CertificateChain: &corepb.DataSource{Specifier: &corepb.DataSource_InlineBytes{InlineBytes: chainPEM}},
		PrivateKey:       &corepb.DataSource{Specifier: &corepb.DataSource_InlineBytes{InlineBytes: keyPEM}},
	}}}
}

// SPIFFEBundleSecret is an SDS validation secret holding one trust bundle
// per trust domain, in a SPIFFE certificate validator config.
func SPIFFEBundleSecret(name string, bundles map[string][]byte) *tlspb.Secret {
	cfg := &tlspb.SPIFFECertValidatorConfig{}
	for _, td := range slices.Sorted(maps.Keys(bundles)) {
		cfg.TrustDomains = append(cfg.TrustDomains, &tlspb.SPIFFECertValidatorConfig_TrustDomain{
			Name:        td,
			TrustBundle: &corepb.DataSource{Specifier: &corepb.DataSource_InlineBytes{InlineBytes: bundles[td]}},
		})
	}
	return &tlspb.Secret{Name: name, Type: &tlspb.Secret_ValidationContext{ValidationContext: &tlspb.CertificateValidationContext{
		CustomValidatorConfig: &corepb.TypedExtensionConfig{Name: "envoy.tls.cert_validator.spiffe", TypedConfig: MustAny(cfg)},
	}}}
}

// SDSSecretConfig references the secret name over ADS.
func SDSSecretConfig(name string) *tlspb.SdsSecretConfig {
	return &tlspb.SdsSecretConfig{Name: name, SdsConfig: adsSource()}
}
