package controlplane_test

import (
	"context"
	"encoding/json"
	"fmt"
	"log"
	"os"
	"path/filepath"

	"mesh/controlplane"
)

func ExampleServer() {
	ctx := context.Background()
	cp, err := controlplane.New(ctx)
	if err != nil {
		log.Fatal(err)
	}
	defer cp.Close()

	dir, err := os.MkdirTemp("", "payments-v1")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)

	// The bootstrap declares the payments service, so YAML may route to it.
	path, err := cp.WriteBootstrap(dir, controlplane.Workload{
		Name: "payments-v1", Service: "payments", Port: 8080,
		Labels: map[string]string{"version": "v1"},
	})
	if err != nil {
		log.Fatal(err)
	}
	err = cp.Apply([]byte(`
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: payments}
spec:
  host: payments
  subsets: [{name: v1, labels: {version: v1}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: payments}
spec:
  hosts: [payments]
  http:
  - route:
    - destination: {host: payments, subset: v1}
`))
	if err != nil {
		log.Fatal(err)
	}

	data, err := os.ReadFile(path)
	if err != nil {
		log.Fatal(err)
	}
	var b struct {
		Node struct {
			ID       string         `json:"id"`
			Metadata map[string]any `json:"metadata"`
		} `json:"node"`
	}
	if err := json.Unmarshal(data, &b); err != nil {
		log.Fatal(err)
	}
	fmt.Println(filepath.Base(path))
	fmt.Println(b.Node.ID)
	fmt.Println(b.Node.Metadata["MESH_SERVICE"])
	// Output:
	// bootstrap.json
	// sidecar~127.0.0.1~payments-v1.default~default.svc.cluster.local
	// payments.default.svc.cluster.local:8080
}

func ExampleServer_Apply_validationError() {
	cp, err := controlplane.New(context.Background())
	if err != nil {
		log.Fatal(err)
	}
	defer cp.Close()
	if _, err := cp.BootstrapJSON(controlplane.Workload{Name: "payments-v1", Service: "payments", Port: 8080}, "/etc/certs"); err != nil {
		log.Fatal(err)
	}
	err = cp.Apply([]byte(`
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: payments}
spec:
  hosts: [payments]
  http:
  - route:
    - destination: {host: payments, subset: v3}
`))
	fmt.Println(err)
	// Output:
	// VirtualService default/payments: spec.http[0].route[0].destination.subset: subset "v3" not defined
}

func ExampleServer_IssueSVID() {
	cp, err := controlplane.New(context.Background(), controlplane.WithTrustDomain("example.org"))
	if err != nil {
		log.Fatal(err)
	}
	defer cp.Close()
	chainPEM, keyPEM, err := cp.IssueSVID("shop", "payments")
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(len(chainPEM) > 0, len(keyPEM) > 0)
	// Output: true true
}

func ExampleClusterName() {
	fmt.Println(controlplane.ClusterName(8080, "v2", "payments.default.svc.cluster.local"))
	// Output: outbound|8080|v2|payments.default.svc.cluster.local
}

// Configuration given to New is in force before the first xDS request is
// answered; if it does not load, New fails rather than serve less.
func ExampleWithConfig() {
	strict := []byte(`
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec: {mtls: {mode: STRICT}}
`)
	cp, err := controlplane.New(context.Background(), controlplane.WithConfig(strict))
	if err != nil {
		log.Fatal(err)
	}
	cp.Close()

	_, err = controlplane.New(context.Background(), controlplane.WithConfig(strict), controlplane.WithConfig([]byte(`
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: payments}
spec:
  hosts: [payments]
  http:
  - route:
    - destination: {host: payments}
      weight: -1
`)))
	fmt.Println(err)
	// Output:
	// WithConfig: VirtualService default/payments: spec.http[0].route[0].weight: -1 must not be negative
}
