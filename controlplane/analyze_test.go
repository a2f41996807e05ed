package controlplane

import (
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"mesh/internal/testutil"
)

// findingsYAML holds one object per finding that only the workloads known
// can reveal, beside a sound route for payments.
const findingsYAML = `apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: {name: ghost}
spec:
  hosts: [ghost]
  http: [{route: [{destination: {host: ghost}}]}]
---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: ghost}
spec: {host: ghost}
---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: payments}
spec:
  host: payments
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v9, labels: {version: v9}}
---
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: orphan}
spec:
  selector: {matchLabels: {app: nobody}}
  mtls: {mode: STRICT}
---
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: orphan}
spec:
  selector: {matchLabels: {app: nobody}}
  action: DENY
  rules: [{from: [{source: {namespaces: [elsewhere]}}]}]
`

// TestApplyWarnsOfFindings: Apply accepts a configuration that refers to
// hosts, subsets and workloads nobody serves, and logs each finding as a
// warning, the same findings Findings (meshctl analyze -live) lists.
func TestApplyWarnsOfFindings(t *testing.T) {
	rec := testutil.NewLogs(slog.LevelWarn)
	s := newTestServer(t, WithLogger(slog.New(rec)))
	// payments v1 serves; no workload has version v9.
	serve(t, s, "payments-1", "127.0.0.1:9001", "v1")
	if err := s.Apply([]byte(findingsYAML)); err != nil {
		t.Fatalf("Apply: %v, want accepted with warnings", err)
	}
	// Apply logs before it returns: what is in the channel is all.
	var logged []string
	for len(rec.Records()) > 0 {
		if r := <-rec.Records(); r.Message == "config finding" {
			logged = append(logged, testutil.Format(r))
		}
	}
	want := []struct{ code, object, field string }{
		{"HostNotServed", "VirtualService default/ghost", `spec.hosts[0] "ghost"`},
		{"SelectsNothing", "DestinationRule default/ghost", `spec.host "ghost"`},
		{"SubsetSelectsNothing", "DestinationRule default/payments", `spec.subsets[1] "v9"`},
		{"SelectsNothing", "PeerAuthentication default/orphan", "spec.selector.matchLabels {app=nobody}"},
		{"SelectsNothing", "AuthorizationPolicy default/orphan", "spec.selector.matchLabels {app=nobody}"},
	}
	findings := s.Findings()
	if len(findings) != len(want) || len(logged) != len(want) {
		t.Errorf("Findings: %+v\nlogged:\n%s\nwant %d of each", findings, strings.Join(logged, "\n"), len(want))
	}
	for _, w := range want {
		if !slices.ContainsFunc(findings, func(f Finding) bool {
			return f.Code == w.code && f.Severity == SeverityWarning && slices.Equal(f.Objects, []string{w.object}) && strings.Contains(f.Message, w.field)
		}) {
			t.Errorf("Findings lack %s on %s at %s: %+v", w.code, w.object, w.field, findings)
		}
		if !slices.ContainsFunc(logged, func(l string) bool {
			return strings.Contains(l, "code="+w.code) && strings.Contains(l, w.object) && strings.Contains(l, w.field)
		}) {
			t.Errorf("Apply did not warn of %s on %s:\n%s", w.code, w.object, strings.Join(logged, "\n"))
		}
	}
}

// TestAnalyzeDirDeniesEveryCaller: the AuthorizationPolicies that deny
// every caller are found, and the ones that deny only some are not.
func TestAnalyzeDirDeniesEveryCaller(t *testing.T) {
	for _, tc := range []struct {
		spec string
		want bool
	}{
		{"{action: ALLOW}", true},
		{"{}", true}, // ALLOW is the default action
		{"{action: DENY, rules: [{}]}", true},
		{"{action: DENY, rules: [{to: [{operation: {methods: [GET]}}]}, {}]}", true},
		{"{action: DENY, rules: [{from: [{source: {namespaces: [other]}}]}]}", false},
		{"{action: ALLOW, rules: [{}]}", false},
		{"{action: ALLOW, rules: [{from: [{source: {principals: [cluster.local/ns/default/sa/checkout]}}]}]}", false},
	} {
		dir := t.TempDir()
		yaml := "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\nspec: " + tc.spec + "\n"
		if err := os.WriteFile(filepath.Join(dir, "p.yaml"), []byte(yaml), 0o644); err != nil {
			t.Fatal(err)
		}
		findings, err := AnalyzeDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		got := slices.ContainsFunc(findings, func(f Finding) bool {
			return f.Code == "DeniesEveryCaller" && f.Severity == SeverityWarning && slices.Equal(f.Objects, []string{"AuthorizationPolicy default/p"})
		})
		if got != tc.want || len(findings) > 1 {
			t.Errorf("spec %s: findings %+v; want DeniesEveryCaller %v", tc.spec, findings, tc.want)
		}
	}
}

// TestAnalyzeDirFindsWhatLoadingRefuses: an object or a host's Canary
// defined in two files, which NewDaemon refuses, is an error offline too,
// naming the file and the other.
func TestAnalyzeDirFindsWhatLoadingRefuses(t *testing.T) {
	dir := t.TempDir()
	vs := "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: payments}\nspec: {hosts: [payments], http: [{route: [{destination: {host: payments}}]}]}\n"
	canary := "apiVersion: mesh/v1alpha1\nkind: Canary\nmetadata: {name: NAME}\nspec: {host: payments, stable: v1, canary: v2, steps: [50, 100], interval: 1m}\n"
	for name, data := range map[string]string{
		"a.yaml": vs + "---\n" + strings.ReplaceAll(canary, "NAME", "first"),
		"b.yaml": vs + "---\n" + strings.ReplaceAll(canary, "NAME", "second"),
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := NewDaemon(t.Context(), DaemonConfig{ConfigDir: dir, StateDir: t.TempDir()}); err == nil {
		t.Fatal("NewDaemon took a config dir defining objects twice")
	}
	findings, err := AnalyzeDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	b := filepath.Join(dir, "b.yaml")
	want := []Finding{
		{Code: "SchemaError", Severity: SeverityError, Objects: []string{b}, Message: "Canary default/second: host payments.default.svc.cluster.local already has a Canary in " + filepath.Join(dir, "a.yaml")},
		{Code: "SchemaError", Severity: SeverityError, Objects: []string{b}, Message: "VirtualService default/payments: also defined in " + filepath.Join(dir, "a.yaml")},
	}
	if !reflect.DeepEqual(findings, want) {
		t.Errorf("findings:\n%+v\nwant\n%+v", findings, want)
	}
}
