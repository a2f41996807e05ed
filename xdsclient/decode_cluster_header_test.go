package xdsclient

import (
	"strings"
	"testing"

	routepb "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
)

func TestDecodeClusterHeader(t *testing.T) {
	headerRoute := func(name string) *routepb.Route {
		return route(&routepb.RouteAction{ClusterSpecifier: &routepb.RouteAction_ClusterHeader{ClusterHeader: name}})
	}
	rc := routeConfig(clusterRoute("a"), headerRoute("X-Target-Cluster"))
	_, res, err := decodeAny(testDecodeContext(), mustAny(t, rc))
	if err != nil {
		t.Fatalf("decode: %v", err)
	}
	got := res.(*RouteConfig).VirtualHosts[0].Routes[1].Action
	if got.ClusterHeader != "x-target-cluster" || got.Cluster != "" || len(got.WeightedClusters) != 0 {
		t.Errorf("action = %+v, want only ClusterHeader \"x-target-cluster\"", got)
	}
	if n := len(got.Clusters()); n != 0 {
		t.Errorf("Clusters() of a cluster_header action has %d names, want 0", n)
	}

	for _, tc := range []struct{ header, want string }{
		{"", `route_config "foo": virtual_hosts[0].routes[0].route.cluster_header: must not be empty`},
		{":authority", `routes[0].route.cluster_header: ":authority": pseudo-headers`},
		{"x-cluster-bin", `routes[0].route.cluster_header: "x-cluster-bin": binary headers`},
		{"x cluster", `routes[0].route.cluster_header: "x cluster": invalid header name character ' ' at offset 1`},
	} {
		_, _, err := decodeAny(testDecodeContext(), mustAny(t, routeConfig(headerRoute(tc.header))))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("cluster_header %q: error %v, want it to contain %q", tc.header, err, tc.want)
		}
	}
}
