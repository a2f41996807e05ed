package xdsclient

import (
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"

	"mesh/xdsclient/internal/lite"
	corepb "mesh/xdsclient/internal/lite/envoy/config/core/v3"
	tlspb "mesh/xdsclient/internal/lite/envoy/extensions/transport_sockets/tls/v3"
)

// Secret is an SDS resource (envoy.extensions.transport_sockets.tls.v3.Secret)
// as mesh uses it: a workload certificate with its key, or the roots to
// validate peers with. Exactly one of Certificate and Validation is set.
//
// A Secret carries a private key: it formats, logs and dumps with the key
// redacted, and the client never writes secrets to its WithCache file.
type Secret struct {
	Name        string
	Certificate *TLSCertificate
	Validation  *ValidationSecret
}

// TLSCertificate is a certificate chain and its private key, both PEM.
type TLSCertificate struct {
	ChainPEM []byte
	KeyPEM   []byte
}

// ValidationSecret holds the roots that validate peer certificates.
type ValidationSecret struct {
	// Bundles maps a SPIFFE trust domain to its trust bundle (PEM
	// certificates), from a SPIFFE certificate validator config.
	Bundles map[string][]byte
	// TrustedCA, from trusted_ca, validates peers of any trust domain
	// that Bundles does not list; nil if the secret has none.
	TrustedCA []byte
}

// BundleFor returns the PEM roots that validate a peer in trustDomain:
// its own bundle, else TrustedCA; nil if neither applies.
func (v *ValidationSecret) BundleFor(trustDomain string) []byte {
	if v == nil {
		return nil
	}
	if b, ok := v.Bundles[trustDomain]; ok {
		return b
	}
	return v.TrustedCA
}

// sdsProviderPrefix starts the synthetic provider name of an SDS
// reference. A colon cannot appear in a bootstrap provider name that
// istio-agent or mesh would write, so the two never collide.
const sdsProviderPrefix = "sds:"

// SDSProviderName is the Provider of a CertificateRef that names the SDS
// secret secretName: "sds:" + secretName. A transport.Providers that maps
// it to an identity source fed by that secret makes SDS-referenced TLS
// contexts work like certificate provider ones.
func SDSProviderName(secretName string) string { return sdsProviderPrefix + secretName }

const redacted = "[redacted]"

// String describes the certificate without its key.
func (c TLSCertificate) String() string {
	return fmt.Sprintf("TLSCertificate{ChainPEM: %d bytes, KeyPEM: %s}", len(c.ChainPEM), redacted)
}

// GoString is String, so %#v does not print the key either.
func (c TLSCertificate) GoString() string { return c.String() }

// Format prints c as String does for every verb, so no verb (%x, %+v,
// %#v) can print the key.
func (c TLSCertificate) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(c.String())) }

// LogValue keeps the key out of structured logs.
func (c TLSCertificate) LogValue() slog.Value { return slog.StringValue(c.String()) }

// String describes the secret without its private key.
func (s Secret) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "Secret{Name: %q", s.Name)
	if s.Certificate != nil {
		b.WriteString(", Certificate: " + s.Certificate.String())
	}
	if s.Validation != nil {
		fmt.Fprintf(&b, ", Validation: {trust domains %q, trusted_ca %d bytes}",
			slices.Sorted(maps.Keys(s.Validation.Bundles)), len(s.Validation.TrustedCA))
	}
	b.WriteString("}")
	return b.String()
}

// GoString is String, so %#v does not print the key either.
func (s Secret) GoString() string { return s.String() }

// Format prints s as String does for every verb.
func (s Secret) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(s.String())) }

// LogValue keeps the key out of structured logs.
func (s Secret) LogValue() slog.Value { return slog.StringValue(s.String()) }

// WatchSecret watches the SDS secret name on the ADS stream, as istiod's
// "default" (the workload certificate) and "ROOTCA" (the roots) are
// fetched by Envoy sidecars.
func (c *Client) WatchSecret(name string, fn func(Event[*Secret])) (cancel func()) {
	return watchTyped(c, kindSecret, name, fn)
}

// redactSecret returns the serialized Secret raw with what holds its
// private key (private_key, pkcs12, a generic secret) replaced by
// "[redacted]", for CSDS; nil if raw does not parse.
func redactSecret(raw []byte) []byte {
	pb := &tlspb.Secret{}
	if err := lite.Unmarshal(raw, pb); err != nil {
		return nil
	}
	if tc := pb.GetTlsCertificate(); tc != nil {
		if tc.GetPrivateKey() != nil {
			tc.PrivateKey = redactedData()
		}
		if tc.GetPkcs12() != nil {
			tc.Pkcs12 = redactedData()
		}
	}
	if pb.GetGenericSecret() != nil {
		pb.Type = &tlspb.Secret_GenericSecret{GenericSecret: nil}
	}
	out, err := pb.AppendTo(nil)
	if err != nil {
		return nil
	}
	return out
}

func redactedData() *corepb.DataSource {
	return &corepb.DataSource{Specifier: &corepb.DataSource_InlineString{InlineString: redacted}}
}

// withoutKey returns v, or for a *Secret a copy without its private key.
func withoutKey(v any) any {
	s, ok := v.(*Secret)
	if !ok || s == nil || s.Certificate == nil {
		return v
	}
	c := *s
	c.Certificate = &TLSCertificate{ChainPEM: s.Certificate.ChainPEM}
	return &c
}
