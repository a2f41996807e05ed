package controlplane

import (
	"strings"
	"testing"

	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacconfig "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	rbacfilter "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/encoding/protojson"
)

const inboundTestName = InboundListenerPrefix + "127.0.0.1:8080"

// inboundFor generates the inbound listener of a payments workload
// (namespace default, labels app=payments) under the given config.
func inboundFor(t *testing.T, yaml string) *listener.Listener {
	t.Helper()
	objs, err := parseYAML([]byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	cfg := configSet{}
	changed := map[objectKey]bool{}
	for _, o := range objs {
		cfg[o.key] = o
		changed[o.key] = true
	}
	reg := buildRegistry("cluster.local", nil, nil, cfg)
	if err := validateConfig(cfg, changed, reg); err != nil {
		t.Fatal(err)
	}
	n := &nodeInfo{namespace: "default", labels: map[string]string{"app": "payments"}}
	res := newGeneration("cluster.local", cfg, reg).nodeResources(n, []string{inboundTestName})
	for _, r := range res[resource.ListenerType] {
		if l := r.(*listener.Listener); l.GetName() == inboundTestName {
			return l
		}
	}
	t.Fatal("no inbound listener generated")
	return nil
}

func chainFilters(t *testing.T, fc *listener.FilterChain) []*hcm.HttpFilter {
	t.Helper()
	var m hcm.HttpConnectionManager
	if err := fc.GetFilters()[0].GetTypedConfig().UnmarshalTo(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetHttpFilters()
}

func rbacOf(t *testing.T, f *hcm.HttpFilter) *rbacconfig.RBAC {
	t.Helper()
	var r rbacfilter.RBAC
	if err := f.GetTypedConfig().UnmarshalTo(&r); err != nil {
		t.Fatalf("filter %s: %v", f.GetName(), err)
	}
	return r.GetRules()
}

func TestPermissiveServesTwoChains(t *testing.T) {
	for _, tc := range []struct {
		mode   string
		chains map[string]string // name -> transport protocol
		tls    map[string]bool
	}{
		{"PERMISSIVE", map[string]string{"inbound-mtls": "tls", "inbound-plaintext": "raw_buffer"}, map[string]bool{"inbound-mtls": true}},
		{"STRICT", map[string]string{"inbound-mtls": ""}, map[string]bool{"inbound-mtls": true}},
		{"DISABLE", map[string]string{"inbound-plaintext": ""}, map[string]bool{}},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			l := inboundFor(t, `
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: default}
spec: {mtls: {mode: `+tc.mode+`}}
`)
			if len(l.GetFilterChains()) != len(tc.chains) {
				t.Fatalf("chains = %v", l.GetFilterChains())
			}
			for _, fc := range l.GetFilterChains() {
				want, ok := tc.chains[fc.GetName()]
				if !ok || fc.GetFilterChainMatch().GetTransportProtocol() != want {
					t.Errorf("chain %q matches transport protocol %q", fc.GetName(), fc.GetFilterChainMatch().GetTransportProtocol())
				}
				if (fc.GetTransportSocket() != nil) != tc.tls[fc.GetName()] {
					t.Errorf("chain %q: transport socket = %v", fc.GetName(), fc.GetTransportSocket())
				}
			}
		})
	}
}

const authzPolicies = `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-checkout, namespace: default}
spec:
  selector: {matchLabels: {app: payments}}
  action: ALLOW
  rules:
  - from:
    - source: {principals: ["cluster.local/ns/default/sa/checkout"]}
    - source: {namespaces: ["shop"]}
    to:
    - operation: {paths: ["/payments.Payments/*"], methods: ["POST"]}
    when:
    - key: request.headers[x-tenant]
      values: ["acme"]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-refunds, namespace: default}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: ["/payments.Payments/Refund"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: audit-all, namespace: istio-system}
spec:
  action: AUDIT
  rules: [{}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: other-workload, namespace: default}
spec:
  selector: {matchLabels: {app: checkout}}
  rules: [{}]
`

func TestAuthorizationPolicyBecomesRBACFilters(t *testing.T) {
	l := inboundFor(t, authzPolicies)
	for _, fc := range l.GetFilterChains() {
		filters := chainFilters(t, fc)
		var names []string
		for _, f := range filters {
			names = append(names, f.GetName())
		}
		want := []string{rbacAuditFilterName, rbacDenyFilterName, rbacFilterName, routerFilterName}
		if strings.Join(names, ",") != strings.Join(want, ",") {
			t.Fatalf("chain %s filters = %v, want %v", fc.GetName(), names, want)
		}
		audit, deny, allow := rbacOf(t, filters[0]), rbacOf(t, filters[1]), rbacOf(t, filters[2])
		if audit.GetAction() != rbacconfig.RBAC_LOG || deny.GetAction() != rbacconfig.RBAC_DENY || allow.GetAction() != rbacconfig.RBAC_ALLOW {
			t.Fatalf("actions = %v %v %v", audit.GetAction(), deny.GetAction(), allow.GetAction())
		}
		if _, ok := audit.GetPolicies()["ns[istio-system]-policy[audit-all]-rule[0]"]; !ok || len(audit.GetPolicies()) != 1 {
			t.Errorf("audit policies = %v", audit.GetPolicies())
		}
		if _, ok := deny.GetPolicies()["ns[default]-policy[deny-refunds]-rule[0]"]; !ok {
			t.Errorf("deny policies = %v", deny.GetPolicies())
		}
		p := allow.GetPolicies()["ns[default]-policy[allow-checkout]-rule[0]"]
		if p == nil || len(allow.GetPolicies()) != 1 {
			t.Fatalf("allow policies = %v (the checkout-only policy must not apply)", allow.GetPolicies())
		}
		raw, err := protojson.Marshal(p)
		if err != nil {
			t.Fatal(err)
		}
		// protojson varies its spacing on purpose; the values have none.
		js := strings.ReplaceAll(string(raw), " ", "")
		for _, want := range []string{
			`"exact":"spiffe://cluster.local/ns/default/sa/checkout"`,
			`"regex":".*/ns/shop/.*"`,
			`"urlPath":{"path":{"prefix":"/payments.Payments/"}}`,
			`"name":":method","stringMatch":{"exact":"POST"}`,
			`"name":"x-tenant","stringMatch":{"exact":"acme"}`,
		} {
			if !strings.Contains(js, want) {
				t.Errorf("allow policy %s\nlacks %s", js, want)
			}
		}
		if len(p.GetPrincipals()) != 2 || len(p.GetPermissions()) != 1 {
			t.Errorf("principals = %d (one per source), permissions = %d (one per operation)", len(p.GetPrincipals()), len(p.GetPermissions()))
		}
	}
}

func TestAllowNothingAndNoPolicies(t *testing.T) {
	l := inboundFor(t, `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-nothing, namespace: default}
spec: {}
`)
	filters := chainFilters(t, l.GetFilterChains()[0])
	if len(filters) != 2 || filters[0].GetName() != rbacFilterName || len(rbacOf(t, filters[0]).GetPolicies()) != 0 {
		t.Fatalf("allow-nothing filters = %v", filters)
	}

	l = inboundFor(t, "")
	if filters := chainFilters(t, l.GetFilterChains()[0]); len(filters) != 1 || filters[0].GetName() != routerFilterName {
		t.Fatalf("no policies: filters = %v", filters)
	}
}

func TestAuthorizationPolicyErrorsNameTheField(t *testing.T) {
	for _, tc := range []struct {
		spec, want string
	}{
		{`{action: CUSTOM, provider: {name: ext}}`, "spec.action: CUSTOM is not supported"},
		{`{rules: [{from: [{source: {requestPrincipals: ["*"]}}]}]}`, "spec.rules[0].from[0].source.requestPrincipals: not supported"},
		{`{rules: [{from: [{source: {ipBlocks: ["10.0.0.0/8", "nope"]}}]}]}`, `spec.rules[0].from[0].source.ipBlocks[1]: "nope" is not an IP address or CIDR block`},
		{`{rules: [{to: [{operation: {ports: ["http"]}}]}]}`, `spec.rules[0].to[0].operation.ports[0]: "http" is not a port number`},
		{`{rules: [{when: [{key: "request.auth.claims[iss]", values: [x]}]}]}`, `spec.rules[0].when[0].key: "request.auth.claims[iss]" is not supported`},
		{`{rules: [{when: [{key: "request.headers[x]"}]}]}`, "spec.rules[0].when[0]: values or notValues required"},
		{`{rules: [{from: [{source: {serviceAccounts: ["a/b/c"]}}]}]}`, `spec.rules[0].from[0].source.serviceAccounts[0]: "a/b/c"`},
	} {
		objs, err := parseYAML([]byte("apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\nspec: " + tc.spec + "\n"))
		if err != nil {
			t.Fatalf("%s: parse: %v", tc.spec, err)
		}
		cfg := configSet{objs[0].key: objs[0]}
		err = validateConfig(cfg, map[objectKey]bool{objs[0].key: true}, buildRegistry("cluster.local", nil, nil, cfg))
		if err == nil || !strings.Contains(err.Error(), "AuthorizationPolicy default/p: "+tc.want) {
			t.Errorf("%s: error = %v, want %q", tc.spec, err, tc.want)
		}
	}
}
