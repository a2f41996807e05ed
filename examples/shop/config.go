package shop

import (
	"fmt"
	"strings"
)

// PaymentsHost and PaymentsPort are where checkout reaches payments: the
// service's host and port, which the control plane serves as listener
// "payments.default.svc.cluster.local:8080".
const (
	PaymentsHost   = "payments.default.svc.cluster.local"
	PaymentsPort   = 8080
	PaymentsTarget = "payments.default.svc.cluster.local:8080"
)

// WebHost and WebURL are where mesh HTTP clients reach the web service.
const (
	WebHost = "web.default.svc.cluster.local"
	WebPort = 8080
	WebURL  = "http://web.default.svc.cluster.local:8080/version"
)

// WebYAML routes the web service's subsets v1 and v2 by weight.
func WebYAML(v1Weight, v2Weight int) []byte { return SplitYAML(WebHost, v1Weight, v2Weight) }

// MeshYAML is the example mesh's Istio configuration: STRICT mTLS for the
// namespace, payments subsets v1 and v2 by label, and a weighted split.
func MeshYAML(v1Weight, v2Weight int) []byte {
	return append([]byte(`apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata:
  name: default
  namespace: default
spec:
  mtls:
    mode: STRICT
---
`), SplitYAML(PaymentsHost, v1Weight, v2Weight)...)
}

// SplitYAML splits the traffic to host between its subsets v1 and v2
// (workloads labelled version: v1 or v2) by weight. The objects are named
// after host's first label.
func SplitYAML(host string, v1Weight, v2Weight int) []byte {
	name, _, _ := strings.Cut(host, ".")
	return fmt.Appendf(nil, `apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata:
  name: %[1]s
  namespace: default
spec:
  host: %[2]s
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
  name: %[1]s
  namespace: default
spec:
  hosts:
  - %[2]s
  http:
  - route:
    - destination:
        host: %[2]s
        subset: v1
      weight: %[3]d
    - destination:
        host: %[2]s
        subset: v2
      weight: %[4]d
`, name, host, v1Weight, v2Weight)
}
