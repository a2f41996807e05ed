package controlplane

import (
	"errors"
	"strings"
	"testing"

	"mesh/internal/testutil"
)

func TestApplyRejectsInvalidConfigAndKeepsOld(t *testing.T) {
	s := newTestServer(t)
	declarePayments(t, s)
	if err := s.Apply([]byte(subsetsYAML + "---\n" + vsYAML(90, 10))); err != nil {
		t.Fatal(err)
	}
	vs := func(route string) string {
		return "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: payments}\nspec:\n  hosts: [payments]\n  http:\n  - route:\n" + route
	}
	tests := []struct {
		name, yaml, want string
	}{
		{"undefined subset", vs("    - destination: {host: payments, subset: v1}\n      weight: 50\n    - destination: {host: payments, subset: v3}\n      weight: 50\n"),
			`VirtualService default/payments: spec.http[0].route[1].destination.subset: subset "v3" not defined`},
		{"negative weight", vs("    - destination: {host: payments, subset: v1}\n      weight: -1\n    - destination: {host: payments, subset: v2}\n      weight: 5\n"),
			`VirtualService default/payments: spec.http[0].route[0].weight: -1 must not be negative`},
		{"all zero weights", vs("    - destination: {host: payments, subset: v1}\n    - destination: {host: payments, subset: v2}\n"),
			`VirtualService default/payments: spec.http[0].route: at least one destination must have weight > 0`},
		{"unknown host", vs("    - destination: {host: refunds}\n"),
			`VirtualService default/payments: spec.http[0].route[0].destination.host: "refunds" is not a known service`},
		{"unknown field", vs("    - destination: {host: payments}\n      wieght: 3\n"),
			`document 0 (VirtualService default/payments): spec.http[0].route[0].wieght: unknown field`},
		{"wrong type", vs("    - destination: {host: payments}\n      weight: heavy\n"),
			`document 0 (VirtualService default/payments): spec.http[0].route[0].weight:`},
		{"bad enum", "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: x}\nspec:\n  mtls: {mode: STRICTEST}\n",
			`document 0 (PeerAuthentication default/x): spec.mtls.mode:`},
		{"unsupported kind", "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n",
			`document 1: kind "ConfigMap": unsupported`},
		{"wrong group", "apiVersion: security.istio.io/v1\nkind: VirtualService\nmetadata: {name: x}\nspec: {hosts: [a]}\n",
			`document 0 (VirtualService default/x): apiVersion "security.istio.io/v1"`},
		{"missing name", "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {}\nspec: {host: a}\n",
			`metadata.name: required`},
		{"bad regex", vs("    - destination: {host: payments}\n") + "    match:\n    - uri: {regex: \"([\"}\n",
			`spec.http[0].match[0].uri.regex:`},
		{"dr tls simple", "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: x}\nspec:\n  host: payments\n  trafficPolicy: {tls: {mode: SIMPLE}}\n",
			`DestinationRule default/x: spec.trafficPolicy.tls.mode: SIMPLE not supported`},
		{"not yaml", "a: [b\n", `document 0: invalid yaml`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			before := s.configSnapshot()
			err := s.Apply([]byte(tc.yaml))
			if err == nil {
				t.Fatalf("Apply accepted invalid config")
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error = %q\nwant it to contain %q", err, tc.want)
			}
			if after := s.configSnapshot(); after != before {
				t.Fatalf("config changed on error:\n%s\n->\n%s", before, after)
			}
		})
	}
}

// configSnapshot renders the stored config, for comparing before and after.
func (s *Server) configSnapshot() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var b strings.Builder
	for _, kind := range []string{KindVirtualService, KindDestinationRule, KindPeerAuthentication, KindServiceEntry, KindWorkloadEntry} {
		for _, o := range s.cfg.sorted(kind) {
			b.WriteString(o.key.String() + " " + o.spec.(interface{ String() string }).String() + "\n")
		}
	}
	return b.String()
}

func TestReplaceAndDelete(t *testing.T) {
	s := newTestServer(t)
	declarePayments(t, s)
	if err := s.Replace([]byte(subsetsYAML + "---\n" + vsYAML(90, 10))); err != nil {
		t.Fatal(err)
	}
	// The VirtualService uses the rule's subsets, so the rule cannot go first.
	if err := s.Delete(KindDestinationRule, "default", "payments"); err == nil || !strings.Contains(err.Error(), `subset "v2" not defined`) {
		t.Fatalf("Delete of a used DestinationRule: %v", err)
	}
	if err := s.Delete(KindVirtualService, "", "payments"); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(KindDestinationRule, "default", "payments"); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(KindDestinationRule, "default", "payments"); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second Delete = %v, want ErrNotFound", err)
	}
	if err := s.Replace([]byte(subsetsYAML)); err != nil {
		t.Fatal(err)
	}
	if got := s.configSnapshot(); !strings.HasPrefix(got, "DestinationRule default/payments") || strings.Count(got, "\n") != 1 {
		t.Fatalf("after Replace: %s", got)
	}
}

func TestParseYAMLDefaultsAndDocuments(t *testing.T) {
	objs, err := parseYAML([]byte("# leading comment\n---\n" + subsetsYAML + "\n---\n# only a comment\n---\n" + `
apiVersion: networking.istio.io/v1beta1
kind: ServiceEntry
metadata: {name: ext, namespace: shop}
spec:
  hosts: [ledger.example.com]
  ports: [{number: 443, name: grpc, protocol: GRPC}]
  endpoints: [{address: 127.0.0.1, labels: {zone: a}}]
`))
	if err != nil {
		t.Fatal(err)
	}
	if len(objs) != 2 {
		t.Fatalf("got %d objects", len(objs))
	}
	if objs[0].key != (objectKey{KindDestinationRule, "default", "payments"}) || objs[1].key != (objectKey{KindServiceEntry, "shop", "ext"}) {
		t.Fatalf("keys = %v, %v", objs[0].key, objs[1].key)
	}
	if _, err := parseYAML([]byte(subsetsYAML + "---\n" + subsetsYAML)); err == nil || !strings.Contains(err.Error(), "duplicate of document 0") {
		t.Fatalf("duplicate: %v", err)
	}
}

func TestServiceEntryAndWorkloadEntryEndpoints(t *testing.T) {
	s := newTestServer(t)
	err := s.Apply([]byte(`
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ledger}
spec:
  hosts: [ledger.example.com]
  ports: [{number: 9000, name: grpc, targetPort: 9100}]
  endpoints: [{address: 127.0.0.2, labels: {v: a}}]
  workloadSelector: {labels: {app: ledger}}
---
apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: ledger-b}
spec:
  address: 127.0.0.3
  labels: {app: ledger, v: b}
  ports: {grpc: 9200}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ledger}
spec:
  host: ledger.example.com
  subsets: [{name: b, labels: {v: b}}]
`))
	if err != nil {
		t.Fatal(err)
	}
	s.mu.Lock()
	g := s.gen
	s.mu.Unlock()
	got := map[string][]string{}
	for _, r := range g.endpoints {
		cla := r.(interface{ GetClusterName() string })
		got[cla.GetClusterName()] = endpointAddrs(r.(*endpointAssignment))
	}
	if want := []string{"127.0.0.2:9100", "127.0.0.3:9200"}; strings.Join(got["outbound|9000||ledger.example.com"], ",") != strings.Join(want, ",") {
		t.Fatalf("endpoints = %v", got)
	}
	if want := "127.0.0.3:9200"; strings.Join(got["outbound|9000|b|ledger.example.com"], ",") != want {
		t.Fatalf("subset endpoints = %v", got)
	}
	// Not labelled as Istio workloads: plaintext, as auto-mTLS does.
	for _, r := range g.clusters {
		if c := r.(*clusterResource); c.GetTransportSocket() != nil {
			t.Fatalf("cluster %s uses TLS", c.GetName())
		}
	}
}

func TestRoutingConfigMayPrecedeWorkloads(t *testing.T) {
	s := newTestServer(t)
	// payments is named by the VirtualService and DestinationRule themselves,
	// so they are accepted before any payments workload is declared...
	if err := s.Apply([]byte(subsetsYAML + "---\n" + vsYAML(90, 10))); err != nil {
		t.Fatal(err)
	}
	// ...while a destination nobody mentions is still a typo.
	err := s.Apply([]byte("apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: x}\nspec:\n  hosts: [checkout]\n  http:\n  - route:\n    - destination: {host: paymnts}\n"))
	if err == nil || !strings.Contains(err.Error(), `VirtualService default/x: spec.http[0].route[0].destination.host: "paymnts" is not a known service`) {
		t.Fatalf("typo accepted or badly reported: %v", err)
	}
}

func TestClosedServer(t *testing.T) {
	s, err := New(testutil.Context(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if err := s.Apply([]byte(subsetsYAML)); !errors.Is(err, ErrClosed) {
		t.Fatalf("Apply after Close = %v", err)
	}
	if _, err := s.BootstrapJSON(Workload{Name: "a"}, "/tmp"); !errors.Is(err, ErrClosed) {
		t.Fatalf("BootstrapJSON after Close = %v", err)
	}
}
