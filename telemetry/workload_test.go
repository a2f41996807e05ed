package telemetry_test

import (
	"encoding/base64"
	"errors"
	"strings"
	"testing"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"mesh/telemetry"
)

func TestPeerMetadataShapeIsIstios(t *testing.T) {
	id, value, err := telemetry.PeerMetadata(payments)
	if err != nil {
		t.Fatalf("PeerMetadata: %v", err)
	}
	if want := "sidecar~~payments-v2.shop~shop.svc.cluster.local"; id != want {
		t.Errorf("node ID %q, want %q", id, want)
	}
	raw, err := base64.StdEncoding.DecodeString(value)
	if err != nil {
		t.Fatalf("value is not base64: %v", err)
	}
	var st structpb.Struct
	if err := proto.Unmarshal(raw, &st); err != nil {
		t.Fatalf("value is not a Struct: %v", err)
	}
	got := st.AsMap()
	want := map[string]any{
		"NAME":            "payments-v2",
		"NAMESPACE":       "shop",
		"WORKLOAD_NAME":   "payments-v2",
		"CLUSTER_ID":      "Kubernetes",
		"SERVICE_ACCOUNT": "payments",
		"OWNER":           "kubernetes://apis/apps/v1/namespaces/shop/deployments/payments-v2",
		"LABELS": map[string]any{
			"app": "payments", "version": "v2",
			"service.istio.io/canonical-name": "payments", "service.istio.io/canonical-revision": "v2",
		},
	}
	if len(got) != len(want) {
		t.Errorf("keys %v, want those of %v", got, want)
	}
	for k, v := range want {
		if m, ok := v.(map[string]any); ok {
			gm, _ := got[k].(map[string]any)
			for lk, lv := range m {
				if gm[lk] != lv {
					t.Errorf("LABELS[%s] = %v, want %v", lk, gm[lk], lv)
				}
			}
			continue
		}
		if got[k] != v {
			t.Errorf("%s = %v, want %v", k, got[k], v)
		}
	}

	again, err := telemetry.ParsePeerMetadata(value)
	if err != nil {
		t.Fatalf("ParsePeerMetadata: %v", err)
	}
	wantBack := payments
	wantBack.Principal = "" // never sent: it comes from the handshake
	wantBack.Instance = "payments-v2"
	if again != wantBack {
		t.Errorf("round trip = %+v, want %+v", again, wantBack)
	}

	// Deterministic: the same workload always yields the same header, which
	// is what lets receivers cache decoded metadata.
	if _, value2, _ := telemetry.PeerMetadata(payments); value2 != value {
		t.Error("PeerMetadata is not deterministic")
	}
}

// A sidecar sends more keys than mesh does, and Kubernetes' recommended
// labels instead of app/version; both must be understood.
func TestParsePeerMetadataFromASidecar(t *testing.T) {
	st, err := structpb.NewStruct(map[string]any{
		"NAME":           "reviews-v3-7d9b8c-abcde",
		"NAMESPACE":      "bookinfo",
		"WORKLOAD_NAME":  "reviews-v3",
		"CLUSTER_ID":     "east",
		"MESH_ID":        "cluster.local",
		"ISTIO_VERSION":  "1.27.0",
		"APP_CONTAINERS": "reviews",
		"INSTANCE_IPS":   "10.1.2.3",
		"LABELS": map[string]any{
			"app.kubernetes.io/name": "reviews", "app.kubernetes.io/version": "v3",
			"service.istio.io/canonical-name": "reviews", "service.istio.io/canonical-revision": "v3",
		},
		"PLATFORM_METADATA": map[string]any{"gcp_project": "p"},
	})
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := proto.Marshal(st)
	for name, value := range map[string]string{
		"padded":   base64.StdEncoding.EncodeToString(raw),
		"unpadded": base64.RawStdEncoding.EncodeToString(raw),
	} {
		w, err := telemetry.ParsePeerMetadata(value)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		want := telemetry.Workload{Name: "reviews-v3", Namespace: "bookinfo", App: "reviews", Version: "v3",
			CanonicalService: "reviews", CanonicalRevision: "v3", Cluster: "east", MeshID: "cluster.local",
			Instance: "reviews-v3-7d9b8c-abcde"}
		if w != want {
			t.Errorf("%s: %+v, want %+v", name, w, want)
		}
	}
}

func TestParsePeerMetadataRejectsBadInput(t *testing.T) {
	tests := []struct {
		name, value, wantErr string
	}{
		{"not base64", "!!!not base64!!!", "not base64"},
		{"not a struct", base64.StdEncoding.EncodeToString([]byte{0xff, 0xff, 0xff}), "not a google.protobuf.Struct"},
		{"too long", strings.Repeat("A", 64<<10), "allowed"},
	}
	for _, tt := range tests {
		_, err := telemetry.ParsePeerMetadata(tt.value)
		if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), telemetry.HeaderPeerMetadata) {
			t.Errorf("%s: err = %v, want one naming %s and saying %q", tt.name, err, telemetry.HeaderPeerMetadata, tt.wantErr)
		}
	}
	if _, err := telemetry.ParsePeerMetadata(""); !errors.Is(err, telemetry.ErrNoPeerMetadata) {
		t.Errorf("empty: err = %v, want ErrNoPeerMetadata", err)
	}
}

func TestWorkloadValidate(t *testing.T) {
	if err := payments.Validate(); err != nil {
		t.Errorf("valid workload: %v", err)
	}
	if err := (telemetry.Workload{}).Validate(); err != nil {
		t.Errorf("zero workload: %v", err)
	}
	bad := []struct {
		w     telemetry.Workload
		field string
	}{
		{telemetry.Workload{Principal: "cluster.local/ns/shop/sa/x"}, "Principal"},
		{telemetry.Workload{Name: "a\nb"}, "Name"},
		{telemetry.Workload{Version: "v1\x7f"}, "Version"},
	}
	for _, b := range bad {
		err := b.w.Validate()
		if err == nil || !strings.Contains(err.Error(), "field "+b.field) {
			t.Errorf("%+v: err = %v, want one naming field %s", b.w, err, b.field)
		}
		if _, _, err := telemetry.PeerMetadata(b.w); err == nil {
			t.Errorf("PeerMetadata(%+v) accepted an invalid workload", b.w)
		}
	}
}
