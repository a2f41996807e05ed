package benchmarks

import (
	"testing"

	"mesh/balancer"
	"mesh/xdsclient"
)

// RoutePick measures the per-RPC routing decision on its own: one route
// match (the third route matches, after two prefix misses) and a 90/10
// weighted cluster pick. It must report 0 allocs/op.
func RoutePick(b *testing.B) {
	rc := &xdsclient.RouteConfig{
		Name: "payments.default.svc.cluster.local:8080",
		VirtualHosts: []xdsclient.VirtualHost{{
			Domains: []string{"payments.default.svc.cluster.local", "payments.default.svc.cluster.local:8080"},
			Routes: []xdsclient.Route{
				{Match: xdsclient.RouteMatch{Prefix: "/mesh.examples.Refunds/", CaseSensitive: true},
					Action: xdsclient.RouteAction{Cluster: "outbound|8080|v1|refunds.default.svc.cluster.local"}},
				{Match: xdsclient.RouteMatch{Path: "/mesh.examples.Payments/Refund", CaseSensitive: true},
					Action: xdsclient.RouteAction{Cluster: "outbound|8080|v2|payments.default.svc.cluster.local"}},
				{Match: xdsclient.RouteMatch{Prefix: "/", CaseSensitive: true},
					Action: xdsclient.RouteAction{WeightedClusters: []xdsclient.ClusterWeight{
						{Name: "outbound|8080|v1|payments.default.svc.cluster.local", Weight: 90},
						{Name: "outbound|8080|v2|payments.default.svc.cluster.local", Weight: 10},
					}}},
			},
		}},
	}
	r, err := balancer.NewRouter(rc, "payments.default.svc.cluster.local:8080")
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if _, _, err := r.Pick("/mesh.examples.Payments/Charge", nil); err != nil {
			b.Fatal(err)
		}
	}
}
