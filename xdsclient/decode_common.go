package xdsclient

import (
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"regexp"
	"strconv"
	"strings"

	"google.golang.org/protobuf/types/known/anypb"

	"mesh/xdsclient/internal/lite"
	corepb "mesh/xdsclient/internal/lite/envoy/config/core/v3"
	tlspb "mesh/xdsclient/internal/lite/envoy/extensions/transport_sockets/tls/v3"
	matcherpb "mesh/xdsclient/internal/lite/envoy/type/matcher/v3"
	typepb "mesh/xdsclient/internal/lite/envoy/type/v3"
)

// Type URLs of the resources and extensions mesh decodes.
const (
	typeURLListener      = "type.googleapis.com/envoy.config.listener.v3.Listener"
	typeURLRouteConfig   = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration"
	typeURLCluster       = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
	typeURLEndpoints     = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"
	typeURLHCM           = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"
	typeURLRouter        = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
	typeURLFault         = "type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault"
	typeURLRBAC          = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC"
	typeURLDownstreamTLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext"
	typeURLUpstreamTLS   = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"
	typeURLTypedStruct   = "type.googleapis.com/xds.type.v3.TypedStruct"
	typeURLUDPATypedStrc = "type.googleapis.com/udpa.type.v1.TypedStruct"
	transportSocketTLS   = "envoy.transport_sockets.tls"
)

// decodeContext carries what validation needs beyond the resource itself.
type decodeContext struct {
	// providers are the bootstrap's certificate provider instance names;
	// nil skips the check (a resource naming a missing one is rejected,
	// as gRFC A29 asks).
	providers map[string]CertificateProvider
	logger    *slog.Logger
	// ignored collects the fields of the resource being decoded that mesh
	// does not implement and skips; the client logs each once and lists
	// them in Dump.
	ignored []string
	// resource is the resource message decoded, which the audit of fields
	// mesh does not apply walks rather than decoding it again.
	resource lite.Message
}

// decoded records m as the resource message being decoded.
func (dc *decodeContext) decoded(m lite.Message) {
	if dc != nil {
		dc.resource = m
	}
}

// ignore records that the field at path was skipped, and why.
func (dc *decodeContext) ignore(path, why string) {
	if dc != nil {
		dc.ignored = append(dc.ignored, path+": "+why)
	}
}

func (dc *decodeContext) log() *slog.Logger {
	if dc == nil || dc.logger == nil {
		return discardLogger()
	}
	return dc.logger
}

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

func joinPath(base, field string) string {
	if base == "" {
		return field
	}
	return base + "." + field
}

// socketAddress validates an Envoy address holding an IP socket address
// and returns "ip:port".
func socketAddress(a *corepb.Address, path string, allowZeroPort bool) (string, error) {
	sa := a.GetSocketAddress()
	if sa == nil {
		return "", fmt.Errorf("%s.socket_address: missing", path)
	}
	ip, err := netip.ParseAddr(sa.GetAddress())
	if err != nil {
		return "", fmt.Errorf("%s.socket_address.address: %q is not an IP address", path, sa.GetAddress())
	}
	if sa.GetNamedPort() != "" {
		return "", fmt.Errorf("%s.socket_address.named_port: unsupported", path)
	}
	port := sa.GetPortValue()
	if port == 0 && !allowZeroPort {
		return "", fmt.Errorf("%s.socket_address.port_value: must not be 0", path)
	}
	if port > 65535 {
		return "", fmt.Errorf("%s.socket_address.port_value: %d is out of range", path, port)
	}
	return net.JoinHostPort(ip.String(), strconv.FormatUint(uint64(port), 10)), nil
}

func cidrRange(c *corepb.CidrRange, path string) (netip.Prefix, error) {
	ip, err := netip.ParseAddr(c.GetAddressPrefix())
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%s.address_prefix: %q is not an IP address", path, c.GetAddressPrefix())
	}
	bits := ip.BitLen()
	if c.GetPrefixLen() != nil {
		bits = int(c.GetPrefixLen().GetValue())
	}
	p, err := ip.Prefix(bits)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%s.prefix_len: %d is invalid for %s", path, bits, ip)
	}
	return p, nil
}

// compileRegex compiles an RE2 pattern anchored to the whole input, as
// Envoy's safe_regex matches the full string.
func compileRegex(rm *matcherpb.RegexMatcher, path string) (*regexp.Regexp, error) {
	if rm == nil {
		return nil, fmt.Errorf("%s: missing", path)
	}
	re, err := regexp.Compile("^(?:" + rm.GetRegex() + ")$")
	if err != nil {
		return nil, fmt.Errorf("%s.regex: %w", path, err)
	}
	return re, nil
}

func stringMatcher(m *matcherpb.StringMatcher, path string) (StringMatcher, error) {
	if m == nil {
		return StringMatcher{}, fmt.Errorf("%s: missing", path)
	}
	out := StringMatcher{IgnoreCase: m.GetIgnoreCase()}
	switch p := m.GetMatchPattern().(type) {
	case *matcherpb.StringMatcher_Exact:
		out.Kind, out.Value = MatchExact, p.Exact
	case *matcherpb.StringMatcher_Prefix:
		if p.Prefix == "" {
			return out, fmt.Errorf("%s.prefix: must not be empty", path)
		}
		out.Kind, out.Value = MatchPrefix, p.Prefix
	case *matcherpb.StringMatcher_Suffix:
		if p.Suffix == "" {
			return out, fmt.Errorf("%s.suffix: must not be empty", path)
		}
		out.Kind, out.Value = MatchSuffix, p.Suffix
	case *matcherpb.StringMatcher_Contains:
		if p.Contains == "" {
			return out, fmt.Errorf("%s.contains: must not be empty", path)
		}
		out.Kind, out.Value = MatchContains, p.Contains
	case *matcherpb.StringMatcher_SafeRegex:
		pattern := p.SafeRegex.GetRegex()
		if out.IgnoreCase {
			pattern = "(?i)" + pattern
		}
		re, err := compileRegex(&matcherpb.RegexMatcher{Regex: pattern}, path+".safe_regex")
		if err != nil {
			return out, err
		}
		out.Kind, out.Value, out.Regex = MatchRegex, p.SafeRegex.GetRegex(), re
	default:
		return out, fmt.Errorf("%s: no supported match pattern", path)
	}
	return out, nil
}

// fractionPerMillion converts an Envoy FractionalPercent to parts per million.
func fractionPerMillion(f *typepb.FractionalPercent, path string) (uint32, error) {
	n := uint64(f.GetNumerator())
	switch f.GetDenominator() {
	case typepb.FractionalPercent_HUNDRED:
		n *= 10000
	case typepb.FractionalPercent_TEN_THOUSAND:
		n *= 100
	case typepb.FractionalPercent_MILLION:
	default:
		return 0, fmt.Errorf("%s.denominator: unsupported value %v", path, f.GetDenominator())
	}
	return uint32(min(n, 1_000_000)), nil
}

// certificateProviderInstance is the common shape of the new and the
// deprecated certificate provider instance messages.
type certificateProviderInstance interface {
	GetInstanceName() string
	GetCertificateName() string
}

func (dc *decodeContext) certRef(p certificateProviderInstance, path string) (CertificateRef, error) {
	if p.GetInstanceName() == "" {
		return CertificateRef{}, fmt.Errorf("%s.instance_name: missing", path)
	}
	if dc != nil && dc.providers != nil {
		if _, ok := dc.providers[p.GetInstanceName()]; !ok {
			return CertificateRef{}, fmt.Errorf("%s.instance_name: certificate provider %q is not in the bootstrap", path, p.GetInstanceName())
		}
	}
	return CertificateRef{Provider: p.GetInstanceName(), Certificate: p.GetCertificateName()}, nil
}

// identityProvider returns the certificate provider of a TLS context's own
// certificate, nil when none is configured.
func (dc *decodeContext) identityProvider(ctx *tlspb.CommonTlsContext, path string) (*CertificateRef, error) {
	if len(ctx.GetTlsCertificates()) > 0 {
		return nil, fmt.Errorf("%s.tls_certificates: unsupported; use tls_certificate_provider_instance or tls_certificate_sds_secret_configs", path)
	}
	if p := ctx.GetTlsCertificateProviderInstance(); p != nil {
		ref, err := dc.certRef(p, path+".tls_certificate_provider_instance")
		return &ref, err
	}
	if p := ctx.GetTlsCertificateCertificateProviderInstance(); p != nil {
		ref, err := dc.certRef(p, path+".tls_certificate_certificate_provider_instance")
		return &ref, err
	}
	if sds := ctx.GetTlsCertificateSdsSecretConfigs(); len(sds) > 0 {
		if len(sds) > 1 {
			return nil, fmt.Errorf("%s.tls_certificate_sds_secret_configs: %d secrets; mesh presents exactly one certificate", path, len(sds))
		}
		ref, err := sdsRef(sds[0], path+".tls_certificate_sds_secret_configs[0]")
		return &ref, err
	}
	return nil, nil
}

// sdsRef validates an SDS secret reference: a name fetched over ADS.
func sdsRef(sc *tlspb.SdsSecretConfig, path string) (CertificateRef, error) {
	if sc.GetName() == "" {
		return CertificateRef{}, fmt.Errorf("%s.name: missing", path)
	}
	if sc.GetSdsConfig().GetAds() == nil {
		// Secrets come on the one ADS stream; a missing sds_config would
		// mean a static bootstrap secret, which gRPC bootstraps lack.
		return CertificateRef{}, fmt.Errorf("%s.sds_config: must be ads", path)
	}
	return CertificateRef{Provider: SDSProviderName(sc.GetName()), Certificate: sc.GetName(), SDS: true}, nil
}

// validation is what a TLS context says about verifying the peer.
type validation struct {
	roots *CertificateRef
	sans  []StringMatcher
}

func (dc *decodeContext) validationContext(ctx *tlspb.CommonTlsContext, path string) (validation, error) {
	var out validation
	var vc *tlspb.CertificateValidationContext
	vcPath := path + ".validation_context"
	switch t := ctx.GetValidationContextType().(type) {
	case nil:
		return out, nil
	case *tlspb.CommonTlsContext_ValidationContext:
		vc = t.ValidationContext
	case *tlspb.CommonTlsContext_CombinedValidationContext:
		vcPath = path + ".combined_validation_context.default_validation_context"
		vc = t.CombinedValidationContext.GetDefaultValidationContext()
		if p := t.CombinedValidationContext.GetValidationContextCertificateProviderInstance(); p != nil {
			ref, err := dc.certRef(p, path+".combined_validation_context.validation_context_certificate_provider_instance")
			if err != nil {
				return out, err
			}
			out.roots = &ref
		} else if sc := t.CombinedValidationContext.GetValidationContextSdsSecretConfig(); sc != nil {
			ref, err := sdsRef(sc, path+".combined_validation_context.validation_context_sds_secret_config")
			if err != nil {
				return out, err
			}
			out.roots = &ref
		}
	case *tlspb.CommonTlsContext_ValidationContextSdsSecretConfig:
		ref, err := sdsRef(t.ValidationContextSdsSecretConfig, path+".validation_context_sds_secret_config")
		if err != nil {
			return out, err
		}
		out.roots = &ref
		return out, nil
	case *tlspb.CommonTlsContext_ValidationContextCertificateProviderInstance:
		ref, err := dc.certRef(t.ValidationContextCertificateProviderInstance, path+".validation_context_certificate_provider_instance")
		if err != nil {
			return out, err
		}
		out.roots = &ref
		return out, nil
	default:
		return out, fmt.Errorf("%s: unsupported validation context type %s; use a certificate provider instance or an SDS secret", path, oneofField(ctx, "validation_context_type"))
	}
	if vc == nil {
		return out, nil
	}
	if p := vc.GetCaCertificateProviderInstance(); p != nil {
		ref, err := dc.certRef(p, vcPath+".ca_certificate_provider_instance")
		if err != nil {
			return out, err
		}
		out.roots = &ref
	}
	if vc.GetTrustedCa() != nil {
		return out, fmt.Errorf("%s.trusted_ca: unsupported; use ca_certificate_provider_instance", vcPath)
	}
	for i, m := range vc.GetMatchSubjectAltNames() {
		sm, err := stringMatcher(m, fmt.Sprintf("%s.match_subject_alt_names[%d]", vcPath, i))
		if err != nil {
			return out, err
		}
		out.sans = append(out.sans, sm)
	}
	for i, m := range vc.GetMatchTypedSubjectAltNames() {
		sm, err := stringMatcher(m.GetMatcher(), fmt.Sprintf("%s.match_typed_subject_alt_names[%d].matcher", vcPath, i))
		if err != nil {
			return out, err
		}
		out.sans = append(out.sans, sm)
	}
	return out, nil
}

// oneofField names the field set in m's oneof, as the proto spells it,
// for messages about what mesh does not support: a Go type name means
// nothing to whoever wrote the config.
func oneofField(m interface{ WhichOneof(string) (string, bool) }, oneof string) string {
	f, ok := m.WhichOneof(oneof)
	switch {
	case !ok:
		return oneof
	case f == "":
		return "unset " + oneof
	}
	return f
}

// unmarshalAny decodes a into m, whose type it must hold, as
// anypb.UnmarshalTo does for protobuf-go's types.
func unmarshalAny(a *anypb.Any, m lite.Message) error {
	url := a.GetTypeUrl()
	name := url[strings.LastIndexByte(url, '/')+1:]
	if name != m.FullName() {
		return fmt.Errorf("mismatched message type: got %q, want %q", name, m.FullName())
	}
	return lite.Unmarshal(a.GetValue(), m)
}
