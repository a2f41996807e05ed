package mesh_test

import (
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"mesh/controlplane"
	"mesh/internal/shop"
	"mesh/internal/testutil"
)

// xdsCredentialsDir writes what a workload enrolled without certificate
// files needs to reach cp's xDS port: the CA's root (to verify cp over
// TLS) and a token proving w's identity. BootstrapJSON(w, dir) names both.
func xdsCredentialsDir(t *testing.T, cp *controlplane.Server, w controlplane.Workload) string {
	t.Helper()
	token, err := cp.WorkloadToken(w)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, controlplane.RootCertFile), cp.RootPEM(), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, controlplane.TokenFile), []byte(token), 0o600); err != nil {
		t.Fatal(err)
	}
	return dir
}

const strictAllowCheckout = `apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: payments-from-checkout, namespace: default}
spec:
  selector: {matchLabels: {app: payments}}
  action: ALLOW
  rules:
  - from:
    - source: {principals: ["cluster.local/ns/default/sa/checkout"]}
`

// The restart window of issue 9: under STRICT + ALLOW sa/checkout, while
// the control plane is down and after it restarts on the same address, a
// plaintext caller and sa/intruder are never served, checkout always is.
// The workloads keep their last inbound listener while no control plane
// serves them, and the restarted one serves the policy from its first
// answer. Loosening the policy then takes effect at once.
func TestControlPlaneRestartKeepsInboundPolicy(t *testing.T) {
	ctx := testutil.Context(t)
	ca, signWithCA := testCA(t)
	w := shop.StartWorldWith(t, ctx, shop.WorldConfig{V1: 100, V2: 0}, shop.WorldOptions{
		ControlPlane: []controlplane.Option{signWithCA, controlplane.WithConfig([]byte(strictAllowCheckout))},
	})
	intruderSVID, err := ca.Issue("spiffe://cluster.local/ns/default/sa/intruder", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	intruder := meshWithIdentity(ctx, t, w.ControlPlane, "intruder-1", intruderSVID, ca.Bundle())
	paymentsAddr := w.Payments["v1"].String()
	refused := func(when string) {
		t.Helper()
		conn, err := grpc.NewClient(paymentsAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		if reply, err := shop.Charge(ctx, conn); err == nil {
			t.Fatalf("%s: a plaintext caller was served: %+v", when, reply)
		}
		if _, err := chargeOnce(ctx, t, intruder); status.Code(err) != codes.PermissionDenied {
			t.Fatalf("%s: sa/intruder got %v, want PermissionDenied", when, err)
		}
		if _, err := shop.Charge(ctx, w.Conn); err != nil {
			t.Fatalf("%s: checkout was refused: %v", when, err)
		}
	}
	refused("control plane up")

	addr := w.ControlPlane.Addr()
	if err := w.ControlPlane.Close(); err != nil {
		t.Fatal(err)
	}
	refused("control plane down")

	// The payments servers come back on the new control plane by their
	// SVIDs (its token key is new); the hook sees their listeners pushed.
	back := make(chan struct{})
	var once sync.Once
	hook := whenServersPushed(2, func() { once.Do(func() { close(back) }) })
	cp2, err := controlplane.New(ctx, controlplane.WithAddress(addr), signWithCA, controlplane.WithLogger(shop.TestLogger(t)),
		controlplane.WithWorkloads(shop.Workloads()...), controlplane.WithSnapshotHook(hook),
		controlplane.WithConfig([]byte(strictAllowCheckout)), controlplane.WithConfig(shop.MeshYAML(100, 0)))
	if err != nil {
		t.Fatalf("restarting the control plane on %s: %v", addr, err)
	}
	t.Cleanup(func() { cp2.Close() })
	select {
	case <-back:
	case <-ctx.Done():
		t.Fatal("the payments servers never came back to the restarted control plane")
	}
	refused("control plane restarted")

	// Loosening applies at once: PERMISSIVE (mesh-wide and for the
	// namespace, which MeshYAML makes STRICT) and no ALLOW policy.
	if err := cp2.Delete(controlplane.KindAuthorizationPolicy, "default", "payments-from-checkout"); err != nil {
		t.Fatal(err)
	}
	for _, ns := range []string{"istio-system", "default"} {
		pa := "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: " + ns + "}\nspec: {mtls: {mode: PERMISSIVE}}\n"
		if err := cp2.Apply([]byte(pa)); err != nil {
			t.Fatal(err)
		}
	}
	for {
		conn, err := grpc.NewClient(paymentsAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		_, err = shop.Charge(ctx, conn)
		conn.Close()
		if err == nil {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("a plaintext caller was never served after PERMISSIVE: %v", err)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// whenServersPushed is a snapshot hook that calls fn each time an inbound
// listener is pushed once n distinct nodes have had one.
func whenServersPushed(n int, fn func()) func(nodeID string, resources map[string][]types.Resource) {
	var mu sync.Mutex
	servers := map[string]bool{}
	return func(nodeID string, resources map[string][]types.Resource) {
		if !hasInboundListener(resources) {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		if servers[nodeID] = true; len(servers) >= n {
			fn()
		}
	}
}
