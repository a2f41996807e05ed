package controlplane

import (
	"testing"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	fault "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
)

func generateFor(t *testing.T, yaml string) map[string][]any {
	t.Helper()
	objs, err := parseYAML([]byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	cfg := configSet{}
	changed := map[objectKey]bool{}
	for _, o := range objs {
		cfg[o.key] = o
		changed[o.key] = true
	}
	declared := map[string]Workload{"default/p": Workload{Name: "p", Service: "payments", Port: 8080}.withDefaults()}
	reg := buildRegistry("cluster.local", declared, nil, cfg)
	if err := validateConfig(cfg, changed, reg); err != nil {
		t.Fatal(err)
	}
	res := newGeneration("cluster.local", cfg, reg).nodeResources(&nodeInfo{namespace: "default"}, nil)
	snap := newSnapshot(res)
	if err := checkConsistent(snap); err != nil {
		t.Fatalf("inconsistent snapshot: %v", err)
	}
	out := map[string][]any{}
	for typ, items := range res {
		for _, it := range items {
			out[typ] = append(out[typ], it)
		}
	}
	return out
}

func TestRoutePoliciesFromVirtualService(t *testing.T) {
	res := generateFor(t, `
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: payments}
spec:
  hosts: [payments]
  http:
  - match: [{uri: {regex: "/pay.*"}}, {uri: {exact: /refund}}]
    timeout: 2s
    retries: {attempts: 3, perTryTimeout: 500ms, retryOn: unavailable}
    fault:
      abort: {grpcStatus: UNAVAILABLE, percentage: {value: 25}}
      delay: {fixedDelay: 1s}
    route:
    - destination: {host: payments}
`)
	rc := res[resource.RouteType][0].(*route.RouteConfiguration)
	routes := rc.GetVirtualHosts()[0].GetRoutes()
	if len(routes) != 3 {
		t.Fatalf("got %d routes, want 2 matches + default", len(routes))
	}
	if routes[0].GetMatch().GetSafeRegex().GetRegex() != "/pay.*" || routes[1].GetMatch().GetPath() != "/refund" {
		t.Fatalf("matches = %v / %v", routes[0].GetMatch(), routes[1].GetMatch())
	}
	a := routes[0].GetRoute()
	if a.GetCluster() != paymentsCluster || a.GetTimeout().AsDuration().String() != "2s" ||
		a.GetMaxStreamDuration().GetMaxStreamDuration().AsDuration().String() != "2s" {
		t.Fatalf("action = %v", a)
	}
	if rp := a.GetRetryPolicy(); rp.GetNumRetries().GetValue() != 3 || rp.GetRetryOn() != "unavailable" || rp.GetPerTryTimeout().AsDuration().String() != "500ms" {
		t.Fatalf("retry policy = %v", rp)
	}
	var f fault.HTTPFault
	if err := routes[0].GetTypedPerFilterConfig()[faultFilterName].UnmarshalTo(&f); err != nil {
		t.Fatal(err)
	}
	if f.GetAbort().GetGrpcStatus() != 14 || f.GetAbort().GetPercentage().GetNumerator() != 250000 ||
		f.GetDelay().GetFixedDelay().AsDuration().String() != "1s" || f.GetDelay().GetPercentage().GetNumerator() != 1000000 {
		t.Fatalf("fault = %v", &f)
	}
	if routes[2].GetMatch().GetPrefix() != "/" || routes[2].GetRoute().GetCluster() != paymentsCluster {
		t.Fatalf("default route = %v", routes[2])
	}
}

func TestClusterPoliciesFromDestinationRule(t *testing.T) {
	res := generateFor(t, `
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: payments}
spec:
  host: payments.default.svc.cluster.local
  trafficPolicy:
    tls: {mode: DISABLE}
    loadBalancer: {simple: LEAST_REQUEST}
    connectionPool: {http: {http2MaxRequests: 100}}
    outlierDetection: {consecutive5xxErrors: 5, interval: 10s, baseEjectionTime: 30s, maxEjectionPercent: 50}
  subsets:
  - name: canary
    labels: {version: v2}
    trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}
`)
	clusters := map[string]*cluster.Cluster{}
	for _, r := range res[resource.ClusterType] {
		c := r.(*cluster.Cluster)
		clusters[c.GetName()] = c
	}
	def := clusters[paymentsCluster]
	if def.GetTransportSocket() != nil || def.GetLbPolicy() != cluster.Cluster_LEAST_REQUEST ||
		def.GetCircuitBreakers().GetThresholds()[0].GetMaxRequests().GetValue() != 100 ||
		def.GetOutlierDetection().GetConsecutive_5Xx().GetValue() != 5 || def.GetOutlierDetection().GetMaxEjectionPercent().GetValue() != 50 {
		t.Fatalf("default cluster = %v", def)
	}
	canary := clusters["outbound|8080|canary|"+paymentsHost]
	if canary.GetTransportSocket() == nil || canary.GetLbPolicy() != cluster.Cluster_LEAST_REQUEST {
		t.Fatalf("subset cluster should inherit LB and override TLS: %v", canary)
	}
}
