package controlplane

import (
	"bytes"
	"testing"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"mesh/internal/testutil"
)

func TestSecretsAreMintedFromNodeMetadata(t *testing.T) {
	ctx := testutil.Context(t)
	s := newTestServer(t) // secrets are served with or without WithSDS
	c := dialADS(t, s, testNode{id: "sidecar~127.0.0.1~pay-1.shop~shop.svc.cluster.local", namespace: "shop", sa: "payments"})
	c.subscribe(resource.SecretType, SecretDefault, SecretRootCA)
	r := c.await(ctx, resource.SecretType, func(r *discovery.DiscoveryResponse) bool { return has(SecretDefault)(r) && has(SecretRootCA)(r) })

	secrets := map[string]*tlsv3.Secret{}
	for _, a := range r.GetResources() {
		sec := &tlsv3.Secret{}
		if err := a.UnmarshalTo(sec); err != nil {
			t.Fatal(err)
		}
		secrets[sec.GetName()] = sec
	}
	cert := secrets[SecretDefault].GetTlsCertificate()
	svid, err := x509svid.Parse(cert.GetCertificateChain().GetInlineBytes(), cert.GetPrivateKey().GetInlineBytes())
	if err != nil {
		t.Fatal(err)
	}
	if want := "spiffe://cluster.local/ns/shop/sa/payments"; svid.ID.String() != want {
		t.Fatalf("minted SVID %s, want %s", svid.ID, want)
	}
	bundle, err := x509bundle.Parse(spiffeid.RequireTrustDomainFromString("cluster.local"), s.RootPEM())
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := x509svid.Verify(svid.Certificates, bundle); err != nil {
		t.Fatalf("minted SVID does not verify against the root: %v", err)
	}

	cv := secrets[SecretRootCA].GetValidationContext().GetCustomValidatorConfig()
	spiffe := &tlsv3.SPIFFECertValidatorConfig{}
	if cv.GetName() != spiffeValidatorName || cv.GetTypedConfig().UnmarshalTo(spiffe) != nil {
		t.Fatalf("ROOTCA validator = %v", cv)
	}
	if tds := spiffe.GetTrustDomains(); len(tds) != 1 || tds[0].GetName() != "cluster.local" || !bytes.Equal(tds[0].GetTrustBundle().GetInlineBytes(), s.RootPEM()) {
		t.Fatalf("ROOTCA trust domains = %v", tds)
	}
}

func TestWithSDSNamesSecretsInTLSContexts(t *testing.T) {
	for _, sds := range []bool{false, true} {
		s := newTestServer(t, WithSDS(sds))
		declarePayments(t, s)
		c := dialADS(t, s, clientNode())
		name := ClusterName(8080, "", "payments.default.svc.cluster.local")
		c.subscribe(resource.ClusterType)
		r := c.await(testutil.Context(t), resource.ClusterType, has(name))
		cl := decode[*cluster.Cluster](t, r)[name]
		up := &tlsv3.UpstreamTlsContext{}
		if err := cl.GetTransportSocket().GetTypedConfig().UnmarshalTo(up); err != nil {
			t.Fatal(err)
		}
		ctx := up.GetCommonTlsContext()
		combined := ctx.GetCombinedValidationContext()
		if sds {
			if sc := ctx.GetTlsCertificateSdsSecretConfigs(); len(sc) != 1 || sc[0].GetName() != SecretDefault || sc[0].GetSdsConfig().GetAds() == nil ||
				combined.GetValidationContextSdsSecretConfig().GetName() != SecretRootCA || ctx.GetTlsCertificateProviderInstance() != nil {
				t.Fatalf("WithSDS(true) TLS context = %v", ctx)
			}
			if len(combined.GetDefaultValidationContext().GetMatchSubjectAltNames()) == 0 {
				t.Fatalf("WithSDS(true) dropped the SAN matchers: %v", combined)
			}
		} else if ctx.GetTlsCertificateProviderInstance().GetInstanceName() != certProviderInstance || len(ctx.GetTlsCertificateSdsSecretConfigs()) != 0 {
			t.Fatalf("WithSDS(false) TLS context = %v", ctx)
		}
	}
}
