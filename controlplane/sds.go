package controlplane

import (
	"context"
	"fmt"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
)

// SDS secret names, as istiod serves them to Envoy sidecars.
const (
	// SecretDefault is the workload's own SVID and key.
	SecretDefault = "default"
	// SecretRootCA is the validation context: the trust bundle of the
	// trust domain, as a SPIFFE certificate validator config.
	SecretRootCA = rootCertName
)

// spiffeValidatorName is the extension name of Envoy's SPIFFE validator.
const spiffeValidatorName = "envoy.tls.cert_validator.spiffe"

// WithSDS makes generated UpstreamTlsContext and DownstreamTlsContext
// reference the SDS secrets "default" and "ROOTCA" over ADS
// (sds_secret_config) instead of the bootstrap's certificate provider
// instances. The server serves those secrets to any node that asks,
// with or without this option (default false).
func WithSDS(enabled bool) DaemonOption {
	return daemonOptionFunc(func(s *settings) { s.sds = enabled })
}

// WithSDSRotation re-mints every node's "default" SVID and pushes it each
// time d elapses (default 0: only when a node's identity changes). Keep
// it well below WithCertTTL.
func WithSDSRotation(d time.Duration) DaemonOption {
	return daemonOptionFunc(func(s *settings) { s.sdsRotation = d })
}

// mintedSecret is the SVID minted for one node, reused until rotation or
// until the node's namespace or service account changes.
type mintedSecret struct {
	namespace, serviceAccount string
	chainPEM, keyPEM          []byte
}

// sdsState is the Server's SDS bookkeeping, guarded by Server.mu.
type sdsState struct {
	enabled bool
	minted  map[string]*mintedSecret // by node id
}

// wantsSecretsLocked reports whether any stream of nodeID asked for secrets.
func (s *Server) wantsSecretsLocked(nodeID string) bool {
	for _, n := range s.streams {
		if n.id == nodeID && n.wantsSecrets {
			return true
		}
	}
	return false
}

// addSecretsLocked adds n's "default" and "ROOTCA" secrets to res when
// the node asked for secrets, minting its SVID if it has none yet.
func (s *Server) addSecretsLocked(n *nodeInfo, res map[string][]types.Resource) {
	if !s.wantsSecretsLocked(n.id) {
		return
	}
	if s.sds.minted == nil {
		s.sds.minted = map[string]*mintedSecret{}
	}
	m := s.sds.minted[n.id]
	if m == nil || m.namespace != n.namespace || m.serviceAccount != n.serviceAccount {
		chain, key, err := s.ca.issue(n.namespace, n.serviceAccount)
		if err != nil {
			s.logger.Error("cannot mint SDS secret; node keeps its last one", "node", n.id, "error", err)
			if m == nil {
				return
			}
		} else {
			m = &mintedSecret{namespace: n.namespace, serviceAccount: n.serviceAccount, chainPEM: chain, keyPEM: key}
			s.sds.minted[n.id] = m
			s.logger.Info("minted SDS secret", "node", n.id, "namespace", n.namespace, "service_account", n.serviceAccount)
		}
	}
	res[resource.SecretType] = []types.Resource{
		certificateSecret(SecretDefault, m.chainPEM, m.keyPEM),
		bundleSecret(SecretRootCA, s.trustDomain.Name(), s.ca.certPEM),
	}
}

// rotateSecrets re-mints every node's SVID each time every elapses, until
// ctx ends.
func (s *Server) rotateSecrets(ctx context.Context, every time.Duration) {
	ticker := time.NewTicker(every)
	defer ticker.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
		s.mu.Lock()
		if s.closed {
			s.mu.Unlock()
			return
		}
		nodes := sortedKeys(s.sds.minted)
		clear(s.sds.minted)
		for _, id := range nodes {
			s.pushNodeLocked(id)
		}
		s.mu.Unlock()
	}
}

func inlineBytes(b []byte) *core.DataSource {
	return &core.DataSource{Specifier: &core.DataSource_InlineBytes{InlineBytes: b}}
}

func certificateSecret(name string, chainPEM, keyPEM []byte) *tlsv3.Secret {
	return &tlsv3.Secret{Name: name, Type: &tlsv3.Secret_TlsCertificate{TlsCertificate: &tlsv3.TlsCertificate{
		CertificateChain: inlineBytes(chainPEM),
		PrivateKey:       inlineBytes(keyPEM),
	}}}
}

// bundleSecret is a validation context holding the trust domain's bundle
// in a SPIFFE certificate validator config, so peers of each trust domain
// are checked against that domain's roots only.
func bundleSecret(name, trustDomain string, bundlePEM []byte) *tlsv3.Secret {
	cfg := &tlsv3.SPIFFECertValidatorConfig{TrustDomains: []*tlsv3.SPIFFECertValidatorConfig_TrustDomain{{
		Name: trustDomain, TrustBundle: inlineBytes(bundlePEM),
	}}}
	return &tlsv3.Secret{Name: name, Type: &tlsv3.Secret_ValidationContext{ValidationContext: &tlsv3.CertificateValidationContext{
		CustomValidatorConfig: &core.TypedExtensionConfig{Name: spiffeValidatorName, TypedConfig: mustAny(cfg)},
	}}}
}

// tlsContext is the CommonTlsContext of generated clusters (with the
// server SANs to accept) and inbound listeners (sans nil).
func (g *generation) tlsContext(sans []string) *tlsv3.CommonTlsContext {
	if !g.sds {
		return commonTLSContext(sans)
	}
	return sdsTLSContext(sans)
}

// sdsTLSContext is commonTLSContext with the certificate and roots named
// as SDS secrets fetched over ADS, the form istiod gives Envoy sidecars.
func sdsTLSContext(sans []string) *tlsv3.CommonTlsContext {
	validation := &tlsv3.CertificateValidationContext{}
	for _, san := range sans {
		validation.MatchSubjectAltNames = append(validation.MatchSubjectAltNames, &matcher.StringMatcher{
			MatchPattern: &matcher.StringMatcher_Exact{Exact: san},
		})
	}
	return &tlsv3.CommonTlsContext{
		TlsCertificateSdsSecretConfigs: []*tlsv3.SdsSecretConfig{{Name: SecretDefault, SdsConfig: adsConfigSource()}},
		ValidationContextType: &tlsv3.CommonTlsContext_CombinedValidationContext{
			CombinedValidationContext: &tlsv3.CommonTlsContext_CombinedCertificateValidationContext{
				DefaultValidationContext:         validation,
				ValidationContextSdsSecretConfig: &tlsv3.SdsSecretConfig{Name: SecretRootCA, SdsConfig: adsConfigSource()},
			},
		},
	}
}

// validateSDSRotation rejects a negative interval.
func validateSDSRotation(d time.Duration) error {
	if d < 0 {
		return fmt.Errorf("sds rotation interval %v: must not be negative", d)
	}
	return nil
}
