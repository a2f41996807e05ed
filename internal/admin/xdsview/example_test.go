package xdsview_test

import (
	"fmt"

	"mesh/internal/admin/xdsview"
	"mesh/xdsclient"
)

// A cluster in force, as /debug/config shows it.
func ExampleResources() {
	views := xdsview.Resources([]xdsclient.ResourceStatus{{
		Type: "cluster", Name: "outbound|8080|v1|payments", Version: "2", Status: xdsclient.StatusAcked,
		Value: &xdsclient.Cluster{Name: "outbound|8080|v1|payments", EDSServiceName: "outbound|8080|v1|payments"},
	}})
	for _, v := range views {
		fmt.Printf("%s %s %s %+v\n", v.Type, v.Name, v.Status, v.Config)
	}
	// Output:
	// cluster outbound|8080|v1|payments ACK {Type:EDS EDSServiceName:outbound|8080|v1|payments LBPolicy:round_robin MaxRequests:0 OutlierDetection:<nil> TLS:<nil>}
}
