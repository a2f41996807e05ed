package xdsclient

import (
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"

	"google.golang.org/protobuf/types/known/anypb"

	"mesh/xdsclient/internal/lite"
	corepb "mesh/xdsclient/internal/lite/envoy/config/core/v3"
	tlspb "mesh/xdsclient/internal/lite/envoy/extensions/transport_sockets/tls/v3"
)

const (
	typeURLSecret          = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
	typeURLSPIFFEValidator = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.SPIFFECertValidatorConfig"
)

// decodeSecret decodes and validates an SDS Secret. Errors name fields,
// never their content: a private key must not reach a NACK or a log.
func (dc *decodeContext) decodeSecret(a *anypb.Any) (string, *Secret, error) {
	pb := &tlspb.Secret{}
	if err := unmarshalAny(a, pb); err != nil {
		return "", nil, fmt.Errorf("secret: cannot unmarshal: %w", err)
	}
	dc.decoded(pb)
	name := pb.GetName()
	if name == "" {
		return "", nil, errors.New("secret: name: missing")
	}
	fail := func(err error) (string, *Secret, error) {
		return name, nil, fmt.Errorf("secret %q: %w", name, err)
	}
	out := &Secret{Name: name}
	switch t := pb.GetType().(type) {
	case *tlspb.Secret_TlsCertificate:
		cert, err := dc.tlsCertificate(t.TlsCertificate, "tls_certificate")
		if err != nil {
			return fail(err)
		}
		out.Certificate = cert
	case *tlspb.Secret_ValidationContext:
		v, err := dc.validationSecret(t.ValidationContext, "validation_context")
		if err != nil {
			return fail(err)
		}
		out.Validation = v
	case nil:
		return fail(errors.New("type: missing; want tls_certificate or validation_context"))
	case *tlspb.Secret_SessionTicketKeys:
		return fail(errors.New("session_ticket_keys: unsupported"))
	case *tlspb.Secret_GenericSecret:
		return fail(errors.New("generic_secret: unsupported"))
	default:
		return fail(fmt.Errorf("type: unsupported %T", t))
	}
	return name, out, nil
}

func (dc *decodeContext) tlsCertificate(pb *tlspb.TlsCertificate, path string) (*TLSCertificate, error) {
	if pb.GetPkcs12() != nil {
		return nil, fmt.Errorf("%s.pkcs12: unsupported; use certificate_chain and private_key", path)
	}
	if pb.GetPrivateKeyProvider() != nil {
		return nil, fmt.Errorf("%s.private_key_provider: unsupported; use private_key", path)
	}
	if pb.GetPassword() != nil {
		return nil, fmt.Errorf("%s.password: unsupported; send an unencrypted private_key", path)
	}
	if pb.GetWatchedDirectory() != nil {
		dc.ignore(path+".watched_directory", "secrets are inline")
	}
	if pb.GetOcspStaple() != nil {
		dc.ignore(path+".ocsp_staple", "not implemented")
	}
	chain, err := inlineData(pb.GetCertificateChain(), path+".certificate_chain")
	if err != nil {
		return nil, err
	}
	key, err := inlineData(pb.GetPrivateKey(), path+".private_key")
	if err != nil {
		return nil, err
	}
	if _, err := parsePEMCertificates(chain, path+".certificate_chain"); err != nil {
		return nil, err
	}
	// X509KeyPair checks that the key parses and matches the leaf; its
	// errors describe the mismatch, never the key.
	if _, err := tls.X509KeyPair(chain, key); err != nil {
		return nil, fmt.Errorf("%s.private_key: does not form a key pair with certificate_chain: %w", path, err)
	}
	return &TLSCertificate{ChainPEM: chain, KeyPEM: key}, nil
}

func (dc *decodeContext) validationSecret(pb *tlspb.CertificateValidationContext, path string) (*ValidationSecret, error) {
	if pb == nil {
		return nil, fmt.Errorf("%s: missing", path)
	}
	out := &ValidationSecret{}
	if pb.GetTrustedCa() != nil {
		ca, err := inlineData(pb.GetTrustedCa(), path+".trusted_ca")
		if err != nil {
			return nil, err
		}
		if _, err := parsePEMCertificates(ca, path+".trusted_ca"); err != nil {
			return nil, err
		}
		out.TrustedCA = ca
	}
	if cv := pb.GetCustomValidatorConfig(); cv != nil {
		bundles, err := dc.spiffeBundles(cv, path+".custom_validator_config")
		if err != nil {
			return nil, err
		}
		out.Bundles = bundles
	}
	if out.TrustedCA == nil && len(out.Bundles) == 0 {
		return nil, fmt.Errorf("%s: no roots; set trusted_ca or a SPIFFE custom_validator_config", path)
	}
	if pb.GetCaCertificateProviderInstance() != nil {
		return nil, fmt.Errorf("%s.ca_certificate_provider_instance: unsupported inside a secret", path)
	}
	if len(pb.GetMatchSubjectAltNames()) > 0 || len(pb.GetMatchTypedSubjectAltNames()) > 0 {
		// SANs belong in the referencing TLS context, which mesh honours.
		dc.ignore(path+".match_subject_alt_names", "SAN matchers are read from the TLS context, not the secret")
	}
	if pb.GetCrl() != nil {
		dc.ignore(path+".crl", "not implemented")
	}
	return out, nil
}

// spiffeBundles decodes a SPIFFE certificate validator config into a
// trust domain -> PEM bundle map.
func (dc *decodeContext) spiffeBundles(cv *corepb.TypedExtensionConfig, path string) (map[string][]byte, error) {
	tc := cv.GetTypedConfig()
	if tc.GetTypeUrl() != typeURLSPIFFEValidator {
		return nil, fmt.Errorf("%s.typed_config: unsupported validator %q; want SPIFFECertValidatorConfig", path, tc.GetTypeUrl())
	}
	cfg := &tlspb.SPIFFECertValidatorConfig{}
	if err := lite.Unmarshal(tc.GetValue(), cfg); err != nil {
		return nil, fmt.Errorf("%s.typed_config: %w", path, err)
	}
	path += ".typed_config"
	if len(cfg.GetTrustDomains()) == 0 {
		if cfg.GetTrustBundles() != nil {
			return nil, fmt.Errorf("%s.trust_bundles: unsupported; list trust_domains", path)
		}
		return nil, fmt.Errorf("%s.trust_domains: empty", path)
	}
	if cfg.GetTrustBundles() != nil {
		dc.ignore(path+".trust_bundles", "trust_domains is used instead")
	}
	out := make(map[string][]byte, len(cfg.GetTrustDomains()))
	for i, td := range cfg.GetTrustDomains() {
		tdPath := fmt.Sprintf("%s.trust_domains[%d]", path, i)
		if err := validTrustDomain(td.GetName()); err != nil {
			return nil, fmt.Errorf("%s.name: %w", tdPath, err)
		}
		if _, dup := out[td.GetName()]; dup {
			return nil, fmt.Errorf("%s.name: trust domain %q listed twice", tdPath, td.GetName())
		}
		bundle, err := inlineData(td.GetTrustBundle(), tdPath+".trust_bundle")
		if err != nil {
			return nil, err
		}
		if _, err := parsePEMCertificates(bundle, tdPath+".trust_bundle"); err != nil {
			return nil, err
		}
		out[td.GetName()] = bundle
	}
	return out, nil
}

// validTrustDomain applies the SPIFFE rules: lowercase letters, digits,
// dots, dashes and underscores, at most 255 bytes.
func validTrustDomain(td string) error {
	if td == "" {
		return errors.New("missing")
	}
	if len(td) > 255 {
		return fmt.Errorf("%d bytes, longer than 255", len(td))
	}
	for i := 0; i < len(td); i++ {
		c := td[i]
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '.' && c != '-' && c != '_' {
			return fmt.Errorf("%q is not a SPIFFE trust domain (byte %d)", td, i)
		}
	}
	return nil
}

// inlineData returns the bytes of an inline DataSource. Files and
// environment variables of the control plane's choosing are refused:
// they would read this process's filesystem and environment.
func inlineData(ds *corepb.DataSource, path string) ([]byte, error) {
	switch s := ds.GetSpecifier().(type) {
	case nil:
		return nil, fmt.Errorf("%s: missing", path)
	case *corepb.DataSource_InlineBytes:
		if len(s.InlineBytes) == 0 {
			return nil, fmt.Errorf("%s.inline_bytes: empty", path)
		}
		return s.InlineBytes, nil
	case *corepb.DataSource_InlineString:
		if s.InlineString == "" {
			return nil, fmt.Errorf("%s.inline_string: empty", path)
		}
		return []byte(s.InlineString), nil
	case *corepb.DataSource_Filename:
		return nil, fmt.Errorf("%s.filename: unsupported; secrets must be inline", path)
	case *corepb.DataSource_EnvironmentVariable:
		return nil, fmt.Errorf("%s.environment_variable: unsupported; secrets must be inline", path)
	default:
		return nil, fmt.Errorf("%s: unsupported data source %T", path, s)
	}
}

// parsePEMCertificates parses every CERTIFICATE block of data; it needs
// at least one and refuses any other block type.
func parsePEMCertificates(data []byte, path string) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for i := 0; ; i++ {
		var block *pem.Block
		block, data = pem.Decode(data)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" {
			return nil, fmt.Errorf("%s: PEM block %d is %q, want CERTIFICATE", path, i, block.Type)
		}
		c, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("%s: PEM block %d: %w", path, i, err)
		}
		out = append(out, c)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s: no PEM certificates", path)
	}
	return out, nil
}
