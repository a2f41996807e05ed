package main

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"mesh/controlplane"
)

// TestProxyStatusShowsNACKInFull: how proxy-status shows a workload that
// rejected a version and one that has not ACKed the latest yet. A real
// NACK needs a control plane that sends a bad resource, which meshctl
// controlplane never does (controlplane's
// TestSnapshotHookInjectsResourcesAndNACKIsHeld proves ProxyStatus holds
// it); here the API answers with that status, and the binary must print
// the error in full, both versions, and exit 1.
func TestProxyStatusShowsNACKInFull(t *testing.T) {
	nack := "cluster outbound|8080|v2|payments.default.svc.cluster.local: spec.outlierDetection.interval: must be positive; " + strings.Repeat("and this detail too ", 20) + "end"
	status := []controlplane.ProxyStatus{{
		Node: "sidecar~127.0.0.1~checkout.default~default.svc.cluster.local", Workload: "default/checkout",
		Identity: "spiffe://cluster.local/ns/default/sa/checkout", LastSeen: time.Now().UTC(),
		Types: []controlplane.TypeStatus{
			{Type: "LDS", Sent: "7", Acked: "7", State: "SYNCED"},
			{Type: "RDS", Sent: "7", Acked: "6", State: "STALE"},
			{Type: "CDS", Sent: "7", Acked: "6", State: "NACKED", Error: nack},
		},
	}}
	const token = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/api/v1/proxy-status" || r.Header.Get("Authorization") != "Bearer "+token {
			http.Error(w, "unexpected "+r.URL.Path, http.StatusNotFound)
			return
		}
		json.NewEncoder(w).Encode(status)
	}))
	defer api.Close()
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte(token), 0o600); err != nil {
		t.Fatal(err)
	}

	r := meshctl(t, "proxy-status", "-api", api.URL, "-token", tokenFile)
	if r.code != 1 {
		t.Errorf("proxy-status with a NACK: exit %d, want 1\n%s%s", r.code, r.stdout, r.stderr)
	}
	for _, want := range []string{
		"default/checkout CDS NACK (sent 7, running 6): " + nack + "\n",
		"default/checkout RDS STALE: sent 7, ACKed 6\n",
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("proxy-status output lacks %q:\n%s", want, r.stdout)
		}
	}
	if !regexp.MustCompile(`default/checkout\s+spiffe://\S+\s+SYNCED\s+STALE\s+NACKED\s+-\s+-\s+\d+s ago`).MatchString(r.stdout) {
		t.Errorf("proxy-status table lacks the per-type states:\n%s", r.stdout)
	}
	r = meshctl(t, "proxy-status", "-api", api.URL, "-token", tokenFile, "-o", "json")
	var got []controlplane.ProxyStatus
	if err := json.Unmarshal([]byte(r.stdout), &got); err != nil || r.code != 1 || len(got) != 1 || got[0].Types[2].Error != nack {
		t.Errorf("proxy-status -o json: exit %d, %+v (%v); want exit 1 and the NACK's error in full", r.code, got, err)
	}
}
