package xdstest_test

import (
	"fmt"

	"mesh/xdsclient"
	"mesh/xdsclient/xdstest"
)

// The resources of one service, as a test's control plane would serve them.
func ExampleRouteConfig() {
	rc := xdstest.RouteConfig("route-1", "payments", xdsclient.ClusterWeight{Name: "v1", Weight: 90}, xdsclient.ClusterWeight{Name: "v2", Weight: 10})
	cla := xdstest.Endpoints("v1", "127.0.0.1:8080", "127.0.0.1:8081")
	vh := rc.GetVirtualHosts()[0]
	fmt.Println(rc.GetName(), vh.GetDomains())
	for _, c := range vh.GetRoutes()[0].GetRoute().GetWeightedClusters().GetClusters() {
		fmt.Println(c.GetName(), c.GetWeight().GetValue())
	}
	fmt.Println(cla.GetClusterName(), len(cla.GetEndpoints()[0].GetLbEndpoints()))
	// Output:
	// route-1 [payments]
	// v1 90
	// v2 10
	// v1 2
}
