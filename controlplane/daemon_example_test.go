package controlplane_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"

	"mesh/controlplane"
)

// A Daemon is what `meshctl controlplane` runs: configuration from a
// watched directory, state in another, and a canary steered through it.
func ExampleNewDaemon() {
	ctx := context.Background()
	tmp, err := os.MkdirTemp("", "daemon")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(tmp)
	config := filepath.Join(tmp, "mesh.d")
	if err := os.Mkdir(config, 0o755); err != nil {
		log.Fatal(err)
	}
	err = os.WriteFile(filepath.Join(config, "payments.yaml"), []byte(`
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: payments}
spec:
  host: payments
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: payments}
spec:
  hosts: [payments]
  http:
  - route:
    - destination: {host: payments, subset: v1}
`), 0o644)
	if err != nil {
		log.Fatal(err)
	}
	d, err := controlplane.NewDaemon(ctx, controlplane.DaemonConfig{
		ConfigDir: config, StateDir: filepath.Join(tmp, "state"), APIAddress: "127.0.0.1:0",
	}, controlplane.WithWorkloads(
		controlplane.Workload{Name: "payments-v1", Service: "payments", Port: 8080, Labels: map[string]string{"version": "v1"}},
		controlplane.Workload{Name: "payments-v2", Service: "payments", Port: 8080, Labels: map[string]string{"version": "v2"}},
	))
	if err != nil {
		log.Fatal(err)
	}
	defer d.Close()

	if err := d.SetWeights("payments", map[string]int{"v1": 90, "v2": 10}); err != nil {
		log.Fatal(err)
	}
	st, err := d.CanaryStatus("payments")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(st.Host, st.Weights)
	// Output: payments.default.svc.cluster.local map[v1:90 v2:10]
}
