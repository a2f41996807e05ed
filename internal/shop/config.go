package shop

import "fmt"

// PaymentsHost and PaymentsPort are where checkout reaches payments: the
// service's host and port, which the control plane serves as listener
// "payments.default.svc.cluster.local:8080".
const (
	PaymentsHost   = "payments.default.svc.cluster.local"
	PaymentsPort   = 8080
	PaymentsTarget = "payments.default.svc.cluster.local:8080"
)

// MeshYAML is the example mesh's Istio configuration: STRICT mTLS for the
// namespace, payments subsets v1 and v2 by label, and a weighted split.
func MeshYAML(v1Weight, v2Weight int) []byte {
	return fmt.Appendf(nil, `apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata:
  name: default
  namespace: default
spec:
  mtls:
    mode: STRICT
---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata:
  name: payments
  namespace: default
spec:
  host: %[1]s
  subsets:
  - name: v1
    labels:
      version: v1
  - name: v2
    labels:
      version: v2
---
apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata:
  name: payments
  namespace: default
spec:
  hosts:
  - %[1]s
  http:
  - route:
    - destination:
        host: %[1]s
        subset: v1
      weight: %[2]d
    - destination:
        host: %[1]s
        subset: v2
      weight: %[3]d
`, PaymentsHost, v1Weight, v2Weight)
}
