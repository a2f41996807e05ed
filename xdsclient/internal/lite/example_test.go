package lite_test

import (
	"fmt"

	"google.golang.org/protobuf/encoding/protowire"

	"mesh/xdsclient/internal/lite"
	clusterv3 "mesh/xdsclient/internal/lite/envoy/config/cluster/v3"
)

// Decoding a Cluster whose name is set, then walking the fields it sets.
func Example() {
	wire := protowire.AppendTag(nil, 1, protowire.BytesType) // Cluster.name
	wire = protowire.AppendString(wire, "outbound|8080||payments.default.svc.cluster.local")
	var c clusterv3.Cluster
	if err := lite.Unmarshal(wire, &c); err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(c.GetName())
	c.RangeSet(func(f lite.Field) bool {
		fmt.Println("set:", f.Name)
		return true
	})
	// Output:
	// outbound|8080||payments.default.svc.cluster.local
	// set: name
}
