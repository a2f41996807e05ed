package handshake_test

import (
	"fmt"

	"google.golang.org/grpc/resolver"

	"mesh/internal/handshake"
	"mesh/xdsclient"
)

// The balancer tags each endpoint address with its cluster's TLS settings;
// the transport credentials read them back during the handshake.
func ExampleSet() {
	tls := &xdsclient.UpstreamTLS{Roots: xdsclient.CertificateRef{Provider: "default", Certificate: "ROOTCA"}}
	addr := handshake.Set(resolver.Address{Addr: "127.0.0.1:8080"},
		&handshake.Info{Cluster: "outbound|8080|v1|payments.default.svc.cluster.local", TLS: tls})

	info := handshake.FromAttributes(addr.Attributes)
	fmt.Println(info.Cluster, info.TLS.Roots.Certificate)
	fmt.Println(handshake.FromAttributes(resolver.Address{}.Attributes) == nil)
	// Output:
	// outbound|8080|v1|payments.default.svc.cluster.local ROOTCA
	// true
}
