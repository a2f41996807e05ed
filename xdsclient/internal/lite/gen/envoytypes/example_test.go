package envoytypes_test

import (
	"fmt"

	"google.golang.org/protobuf/reflect/protoregistry"

	_ "mesh/xdsclient/internal/lite/gen/envoytypes"
)

// With the package imported, Envoy's types are in protobuf-go's registry.
func Example() {
	mt, err := protoregistry.GlobalTypes.FindMessageByName("envoy.config.cluster.v3.Cluster")
	fmt.Println(mt.Descriptor().FullName(), err)
	// Output: envoy.config.cluster.v3.Cluster <nil>
}
