package xdsclient

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"log/slog"
	"math/big"
	"strings"
	"testing"
	"time"

	corepb "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerpb "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tlspb "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

// selfSigned returns a self-signed certificate and its PKCS#8 key, PEM.
func selfSigned(t testing.TB, cn string) (certPEM, keyPEM []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER})
}

func inline(b []byte) *corepb.DataSource {
	return &corepb.DataSource{Specifier: &corepb.DataSource_InlineBytes{InlineBytes: b}}
}

func certSecret(name string, chain, key []byte) *tlspb.Secret {
	return &tlspb.Secret{Name: name, Type: &tlspb.Secret_TlsCertificate{TlsCertificate: &tlspb.TlsCertificate{
		CertificateChain: inline(chain), PrivateKey: inline(key)}}}
}

func spiffeSecret(t testing.TB, name string, tds ...*tlspb.SPIFFECertValidatorConfig_TrustDomain) *tlspb.Secret {
	return &tlspb.Secret{Name: name, Type: &tlspb.Secret_ValidationContext{ValidationContext: &tlspb.CertificateValidationContext{
		CustomValidatorConfig: &corepb.TypedExtensionConfig{Name: "envoy.tls.cert_validator.spiffe",
			TypedConfig: mustAny(t, &tlspb.SPIFFECertValidatorConfig{TrustDomains: tds})}}}}
}

func TestDecodeSecretForms(t *testing.T) {
	chain, key := selfSigned(t, "leaf")
	root, _ := selfSigned(t, "root")
	other, _ := selfSigned(t, "other root")

	_, v, err := decodeAny(&decodeContext{}, mustAny(t, certSecret("default", chain, key)))
	if err != nil {
		t.Fatal(err)
	}
	s := v.(*Secret)
	if s.Name != "default" || s.Validation != nil || !bytes.Equal(s.Certificate.ChainPEM, chain) || !bytes.Equal(s.Certificate.KeyPEM, key) {
		t.Fatalf("certificate secret = %v", s)
	}

	// inline_string works as inline_bytes does.
	str := certSecret("default", chain, key)
	str.GetTlsCertificate().PrivateKey = &corepb.DataSource{Specifier: &corepb.DataSource_InlineString{InlineString: string(key)}}
	if _, _, err := decodeAny(&decodeContext{}, mustAny(t, str)); err != nil {
		t.Fatalf("inline_string key: %v", err)
	}

	_, v, err = decodeAny(&decodeContext{}, mustAny(t, spiffeSecret(t, "ROOTCA",
		&tlspb.SPIFFECertValidatorConfig_TrustDomain{Name: "cluster.local", TrustBundle: inline(root)},
		&tlspb.SPIFFECertValidatorConfig_TrustDomain{Name: "partner.example", TrustBundle: inline(other)})))
	if err != nil {
		t.Fatal(err)
	}
	s = v.(*Secret)
	if s.Certificate != nil || len(s.Validation.Bundles) != 2 ||
		!bytes.Equal(s.Validation.BundleFor("cluster.local"), root) || !bytes.Equal(s.Validation.BundleFor("partner.example"), other) ||
		s.Validation.BundleFor("elsewhere") != nil {
		t.Fatalf("spiffe secret = %v", s)
	}

	// trusted_ca validates any trust domain without a bundle of its own.
	ca := &tlspb.Secret{Name: "ROOTCA", Type: &tlspb.Secret_ValidationContext{ValidationContext: &tlspb.CertificateValidationContext{TrustedCa: inline(root)}}}
	_, v, err = decodeAny(&decodeContext{}, mustAny(t, ca))
	if err != nil {
		t.Fatal(err)
	}
	if got := v.(*Secret).Validation.BundleFor("anything"); !bytes.Equal(got, root) {
		t.Fatalf("trusted_ca bundle = %q", got)
	}
}

func TestDecodeSecretErrorsNameTheFieldAndHideTheKey(t *testing.T) {
	chain, key := selfSigned(t, "leaf")
	_, otherKey := selfSigned(t, "other")
	root, _ := selfSigned(t, "root")
	tests := []struct {
		name string
		res  proto.Message
		want string
	}{
		{"no name", certSecret("", chain, key), "secret: name: missing"},
		{"no type", &tlspb.Secret{Name: "s"}, `secret "s": type: missing`},
		{"generic", &tlspb.Secret{Name: "s", Type: &tlspb.Secret_GenericSecret{GenericSecret: &tlspb.GenericSecret{}}}, `secret "s": generic_secret: unsupported`},
		{"no key", &tlspb.Secret{Name: "s", Type: &tlspb.Secret_TlsCertificate{TlsCertificate: &tlspb.TlsCertificate{CertificateChain: inline(chain)}}},
			`secret "s": tls_certificate.private_key: missing`},
		{"key from a file", &tlspb.Secret{Name: "s", Type: &tlspb.Secret_TlsCertificate{TlsCertificate: &tlspb.TlsCertificate{CertificateChain: inline(chain),
			PrivateKey: &corepb.DataSource{Specifier: &corepb.DataSource_Filename{Filename: "/etc/shadow"}}}}},
			`secret "s": tls_certificate.private_key.filename: unsupported`},
		{"key from env", &tlspb.Secret{Name: "s", Type: &tlspb.Secret_TlsCertificate{TlsCertificate: &tlspb.TlsCertificate{CertificateChain: inline(chain),
			PrivateKey: &corepb.DataSource{Specifier: &corepb.DataSource_EnvironmentVariable{EnvironmentVariable: "HOME"}}}}},
			`secret "s": tls_certificate.private_key.environment_variable: unsupported`},
		{"garbage chain", certSecret("s", []byte("not pem"), key), `secret "s": tls_certificate.certificate_chain: no PEM certificates`},
		{"key in chain", certSecret("s", key, key), `secret "s": tls_certificate.certificate_chain: PEM block 0 is "PRIVATE KEY"`},
		{"mismatched key", certSecret("s", chain, otherKey), `secret "s": tls_certificate.private_key: does not form a key pair with certificate_chain`},
		{"garbage key", certSecret("s", chain, []byte("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")),
			`secret "s": tls_certificate.private_key: does not form a key pair`},
		{"pkcs12", &tlspb.Secret{Name: "s", Type: &tlspb.Secret_TlsCertificate{TlsCertificate: &tlspb.TlsCertificate{Pkcs12: inline([]byte("x"))}}},
			`secret "s": tls_certificate.pkcs12: unsupported`},
		{"empty validation", &tlspb.Secret{Name: "s", Type: &tlspb.Secret_ValidationContext{ValidationContext: &tlspb.CertificateValidationContext{}}},
			`secret "s": validation_context: no roots`},
		{"bad trusted_ca", &tlspb.Secret{Name: "s", Type: &tlspb.Secret_ValidationContext{ValidationContext: &tlspb.CertificateValidationContext{TrustedCa: inline(key)}}},
			`secret "s": validation_context.trusted_ca: PEM block 0 is "PRIVATE KEY"`},
		{"no trust domains", spiffeSecret(t, "s"), `secret "s": validation_context.custom_validator_config.typed_config.trust_domains: empty`},
		{"bad trust domain", spiffeSecret(t, "s", &tlspb.SPIFFECertValidatorConfig_TrustDomain{Name: "Bad Domain", TrustBundle: inline(root)}),
			`secret "s": validation_context.custom_validator_config.typed_config.trust_domains[0].name: "Bad Domain" is not a SPIFFE trust domain`},
		{"duplicate trust domain", spiffeSecret(t, "s",
			&tlspb.SPIFFECertValidatorConfig_TrustDomain{Name: "a.b", TrustBundle: inline(root)},
			&tlspb.SPIFFECertValidatorConfig_TrustDomain{Name: "a.b", TrustBundle: inline(root)}),
			`trust_domains[1].name: trust domain "a.b" listed twice`},
		{"empty bundle", spiffeSecret(t, "s", &tlspb.SPIFFECertValidatorConfig_TrustDomain{Name: "a.b"}),
			`trust_domains[0].trust_bundle: missing`},
		{"other validator", &tlspb.Secret{Name: "s", Type: &tlspb.Secret_ValidationContext{ValidationContext: &tlspb.CertificateValidationContext{
			CustomValidatorConfig: &corepb.TypedExtensionConfig{Name: "x", TypedConfig: mustAny(t, &tlspb.Secret{})}}}},
			`validation_context.custom_validator_config.typed_config: unsupported validator`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, v, err := decodeAny(&decodeContext{}, mustAny(t, tt.res))
			if err == nil {
				t.Fatalf("accepted: %v", v)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error = %q, want it to contain %q", err, tt.want)
			}
			for _, k := range [][]byte{key, otherKey} {
				if strings.Contains(err.Error(), string(k)) || strings.Contains(err.Error(), "PRIVATE KEY-----") {
					t.Fatalf("error %q leaks a private key", err)
				}
			}
		})
	}
}

func TestSecretFormatsWithoutKey(t *testing.T) {
	chain, key := selfSigned(t, "leaf")
	_, v, err := decodeAny(&decodeContext{}, mustAny(t, certSecret("default", chain, key)))
	if err != nil {
		t.Fatal(err)
	}
	s := v.(*Secret)
	var logged bytes.Buffer
	slog.New(slog.NewTextHandler(&logged, nil)).Info("secret", "secret", s, "cert", s.Certificate, "value", *s)
	ev := Event[*Secret]{Resource: s}
	for _, out := range []string{
		fmt.Sprint(s), fmt.Sprintf("%+v", s), fmt.Sprintf("%#v", s), fmt.Sprintf("%v", *s), fmt.Sprintf("%x", s.Certificate),
		fmt.Sprintf("%+v", ev), fmt.Sprintf("%#v", *s.Certificate), logged.String(),
	} {
		if strings.Contains(out, "PRIVATE KEY") || strings.Contains(out, string(key)) {
			t.Fatalf("formatted secret leaks its key: %s", out)
		}
		if !strings.Contains(out, redacted) {
			t.Fatalf("formatted secret %q does not say the key is redacted", out)
		}
	}
	if raw := redactSecret(mustAny(t, certSecret("default", chain, key)).GetValue()); bytes.Contains(raw, key) || !bytes.Contains(raw, chain) {
		t.Fatal("redactSecret kept the key or dropped the chain")
	}
}

func TestDecodeSDSReferencesInTLSContexts(t *testing.T) {
	ads := &corepb.ConfigSource{ConfigSourceSpecifier: &corepb.ConfigSource_Ads{Ads: &corepb.AggregatedConfigSource{}}}
	sds := func(name string) *tlspb.SdsSecretConfig { return &tlspb.SdsSecretConfig{Name: name, SdsConfig: ads} }
	withTLS := func(t *testing.T, ctx *tlspb.DownstreamTlsContext) *listenerpb.Listener {
		l := istioInboundListener(t)
		l.FilterChains[0].TransportSocket.ConfigType = &corepb.TransportSocket_TypedConfig{TypedConfig: mustAny(t, ctx)}
		return l
	}
	// The form Envoy sidecars get from istiod: SANs in the default
	// validation context, roots by SDS.
	l := withTLS(t, &tlspb.DownstreamTlsContext{
		RequireClientCertificate: wrapperspb.Bool(true),
		CommonTlsContext: &tlspb.CommonTlsContext{
			TlsCertificateSdsSecretConfigs: []*tlspb.SdsSecretConfig{sds("default")},
			ValidationContextType: &tlspb.CommonTlsContext_CombinedValidationContext{CombinedValidationContext: &tlspb.CommonTlsContext_CombinedCertificateValidationContext{
				DefaultValidationContext:         &tlspb.CertificateValidationContext{},
				ValidationContextSdsSecretConfig: sds("ROOTCA"),
			}},
		}})
	dc := &decodeContext{providers: map[string]CertificateProvider{}} // SDS needs no bootstrap provider
	_, v, err := decodeAny(dc, mustAny(t, l))
	if err != nil {
		t.Fatal(err)
	}
	got := v.(*Listener).FilterChains[0].TLS
	want := DownstreamTLS{
		Identity:                 CertificateRef{Provider: "sds:default", Certificate: "default", SDS: true},
		Roots:                    &CertificateRef{Provider: "sds:ROOTCA", Certificate: "ROOTCA", SDS: true},
		RequireClientCertificate: true,
	}
	if got.Identity != want.Identity || *got.Roots != *want.Roots || !got.RequireClientCertificate {
		t.Fatalf("TLS = %+v / %+v, want %+v / %+v", got, got.Roots, want, want.Roots)
	}

	// The plain validation_context_sds_secret_config form.
	l = withTLS(t, &tlspb.DownstreamTlsContext{CommonTlsContext: &tlspb.CommonTlsContext{
		TlsCertificateSdsSecretConfigs: []*tlspb.SdsSecretConfig{sds("default")},
		ValidationContextType:          &tlspb.CommonTlsContext_ValidationContextSdsSecretConfig{ValidationContextSdsSecretConfig: sds("ROOTCA")},
	}})
	if _, v, err = decodeAny(dc, mustAny(t, l)); err != nil {
		t.Fatal(err)
	}
	if r := v.(*Listener).FilterChains[0].TLS.Roots; r == nil || *r != *want.Roots {
		t.Fatalf("roots = %+v", r)
	}

	bad := []struct {
		name string
		ctx  *tlspb.CommonTlsContext
		want string
	}{
		{"neither form", &tlspb.CommonTlsContext{}, "tls_certificate_provider_instance: missing, and no tls_certificate_sds_secret_configs"},
		{"two secrets", &tlspb.CommonTlsContext{TlsCertificateSdsSecretConfigs: []*tlspb.SdsSecretConfig{sds("a"), sds("b")}},
			"tls_certificate_sds_secret_configs: 2 secrets"},
		{"unnamed", &tlspb.CommonTlsContext{TlsCertificateSdsSecretConfigs: []*tlspb.SdsSecretConfig{{SdsConfig: ads}}},
			"tls_certificate_sds_secret_configs[0].name: missing"},
		{"not ads", &tlspb.CommonTlsContext{TlsCertificateSdsSecretConfigs: []*tlspb.SdsSecretConfig{{Name: "default"}}},
			"tls_certificate_sds_secret_configs[0].sds_config: must be ads"},
		{"roots not ads", &tlspb.CommonTlsContext{TlsCertificateSdsSecretConfigs: []*tlspb.SdsSecretConfig{sds("default")},
			ValidationContextType: &tlspb.CommonTlsContext_ValidationContextSdsSecretConfig{ValidationContextSdsSecretConfig: &tlspb.SdsSecretConfig{Name: "ROOTCA"}}},
			"validation_context_sds_secret_config.sds_config: must be ads"},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			_, _, err := decodeAny(dc, mustAny(t, withTLS(t, &tlspb.DownstreamTlsContext{CommonTlsContext: tt.ctx})))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error = %v, want it to contain %q", err, tt.want)
			}
		})
	}
}

// TestRedactSecretHidesEveryKeyForm covers each place a Secret can carry a
// private key: redactSecret's output, read back with go-control-plane's own
// types, keeps the chain and holds none of the key's bytes.
func TestRedactSecretHidesEveryKeyForm(t *testing.T) {
	chain, key := selfSigned(t, "leaf")
	for name, s := range map[string]*tlspb.Secret{
		"private_key": certSecret("default", chain, key),
		"pkcs12": {Name: "p12", Type: &tlspb.Secret_TlsCertificate{TlsCertificate: &tlspb.TlsCertificate{
			CertificateChain: inline(chain), Pkcs12: inline(key)}}},
		"both": {Name: "both", Type: &tlspb.Secret_TlsCertificate{TlsCertificate: &tlspb.TlsCertificate{
			CertificateChain: inline(chain), PrivateKey: inline(key), Pkcs12: inline(key)}}},
		"generic_secret": {Name: "g", Type: &tlspb.Secret_GenericSecret{GenericSecret: &tlspb.GenericSecret{Secret: inline(key)}}},
	} {
		raw := redactSecret(mustAny(t, s).GetValue())
		if raw == nil {
			t.Fatalf("%s: redactSecret refused a valid secret", name)
		}
		if bytes.Contains(raw, key) || bytes.Contains(raw, key[40:80]) {
			t.Fatalf("%s: the redacted secret keeps key bytes", name)
		}
		got := &tlspb.Secret{}
		if err := proto.Unmarshal(raw, got); err != nil {
			t.Fatalf("%s: go-control-plane cannot read the redacted secret: %v", name, err)
		}
		if got.GetName() != s.GetName() {
			t.Fatalf("%s: name %q, want %q", name, got.GetName(), s.GetName())
		}
		if tc := got.GetTlsCertificate(); tc != nil {
			if !bytes.Equal(tc.GetCertificateChain().GetInlineBytes(), chain) {
				t.Fatalf("%s: the chain did not survive", name)
			}
			for field, ds := range map[string]*corepb.DataSource{"private_key": tc.GetPrivateKey(), "pkcs12": tc.GetPkcs12()} {
				if ds != nil && ds.GetInlineString() != redacted {
					t.Fatalf("%s: %s = %v, want %q", name, field, ds, redacted)
				}
			}
		}
	}
	if redactSecret([]byte{0x12, 0x05, 0x0a}) != nil {
		t.Fatal("redactSecret accepted a truncated secret")
	}
}
