package controlplane

import (
	"testing"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
)

func TestConsistentHashBecomesRouteHashPolicy(t *testing.T) {
	for _, tc := range []struct {
		lb   string
		want func(*route.RouteAction_HashPolicy) bool
	}{
		{"{consistentHash: {httpHeaderName: x-user}}", func(p *route.RouteAction_HashPolicy) bool { return p.GetHeader().GetHeaderName() == "x-user" }},
		{"{consistentHash: {useSourceIp: true}}", func(p *route.RouteAction_HashPolicy) bool { return p.GetFilterState().GetKey() == "io.grpc.channel_id" }},
		{"{consistentHash: {httpQueryParameterName: user}}", func(p *route.RouteAction_HashPolicy) bool { return p.GetQueryParameter().GetName() == "user" }},
	} {
		res := generateFor(t, `
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: payments}
spec:
  host: payments
  trafficPolicy: {loadBalancer: `+tc.lb+`}
`)
		for _, r := range res[resource.RouteType] {
			rc := r.(*route.RouteConfiguration)
			for _, rt := range rc.GetVirtualHosts()[0].GetRoutes() {
				hp := rt.GetRoute().GetHashPolicy()
				if len(hp) != 1 || !tc.want(hp[0]) {
					t.Errorf("%s: route %s of %s has hash policy %v", tc.lb, rt.GetName(), rc.GetName(), hp)
				}
			}
		}
		for _, c := range res[resource.ClusterType] {
			if c := c.(*cluster.Cluster); c.GetLbPolicy() != cluster.Cluster_RING_HASH {
				t.Errorf("%s: cluster %s lb_policy %v, want RING_HASH", tc.lb, c.GetName(), c.GetLbPolicy())
			}
		}
	}
}

func TestOutlierDetectionAsIstiodWritesIt(t *testing.T) {
	res := generateFor(t, `
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: payments}
spec:
  host: payments
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 3, interval: 1s, baseEjectionTime: 30s, maxEjectionPercent: 50}
`)
	c := res[resource.ClusterType][0].(*cluster.Cluster)
	od := c.GetOutlierDetection()
	if od.GetConsecutive_5Xx().GetValue() != 3 || od.GetEnforcingConsecutive_5Xx().GetValue() != 100 ||
		od.GetEnforcingSuccessRate() == nil || od.GetEnforcingSuccessRate().GetValue() != 0 ||
		od.GetMaxEjectionPercent().GetValue() != 50 || od.GetInterval().AsDuration().Seconds() != 1 {
		t.Errorf("outlier_detection = %v", od)
	}
}

func TestServiceEntryLocalitiesAndDistribute(t *testing.T) {
	const se = `
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ledger}
spec:
  hosts: [ledger.example.com]
  ports: [{number: 9000, name: grpc}]
  endpoints:
  - {address: 10.0.0.1, locality: r1/z1/s1, weight: 2}
  - {address: 10.0.0.2, locality: r1/z1/s1}
  - {address: 10.0.0.3, locality: r1/z2}
  - {address: 10.0.0.4, locality: r2/z9}
`
	find := func(res map[string][]any) *endpointv3.ClusterLoadAssignment {
		for _, e := range res[resource.EndpointType] {
			if cla := e.(*endpointv3.ClusterLoadAssignment); cla.GetClusterName() == "outbound|9000||ledger.example.com" {
				return cla
			}
		}
		t.Fatal("no endpoints for ledger")
		return nil
	}
	weights := func(cla *endpointv3.ClusterLoadAssignment) map[string]uint32 {
		out := map[string]uint32{}
		for _, loc := range cla.GetEndpoints() {
			l := loc.GetLocality()
			out[l.GetRegion()+"/"+l.GetZone()+"/"+l.GetSubZone()] = loc.GetLoadBalancingWeight().GetValue()
		}
		return out
	}
	got := weights(find(generateFor(t, se)))
	want := map[string]uint32{"r1/z1/s1": 3, "r1/z2/": 1, "r2/z9/": 1}
	if len(got) != len(want) {
		t.Fatalf("locality weights %v, want %v", got, want)
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("locality weights %v, want %v", got, want)
		}
	}

	got = weights(find(generateFor(t, se+`---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ledger}
spec:
  host: ledger.example.com
  trafficPolicy:
    loadBalancer:
      localityLbSetting:
        distribute: [{from: "*", to: {"r1/z1/*": 80, "r1/z2/*": 20}}]
`)))
	if len(got) != 2 || got["r1/z1/s1"] != 80 || got["r1/z2/"] != 20 {
		t.Errorf("distributed locality weights %v, want r1/z1/s1:80 r1/z2/:20 and r2 dropped", got)
	}
}
