package registry_test

import (
	"fmt"

	"mesh/xdsclient/internal/lite/registry"
)

// Making the message a google.protobuf.Any's type URL names.
func ExampleNew() {
	m := registry.New("type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment")
	fmt.Println(m.FullName())
	fmt.Println(registry.New("type.googleapis.com/envoy.config.bootstrap.v3.Bootstrap") == nil)
	// Output:
	// envoy.config.endpoint.v3.ClusterLoadAssignment
	// true
}
