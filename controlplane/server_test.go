package controlplane

import (
	"log/slog"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"mesh/internal/testutil"
)

const (
	paymentsHost     = "payments.default.svc.cluster.local"
	paymentsListener = paymentsHost + ":8080"
	paymentsCluster  = "outbound|8080||" + paymentsHost
)

func paymentsNode(id, addr, version string) testNode {
	return testNode{
		id: "sidecar~127.0.0.1~" + id + ".default~default.svc.cluster.local", namespace: "default",
		service: paymentsListener, labels: map[string]string{"app": "payments", "version": version}, address: addr,
	}
}

func clientNode() testNode {
	return testNode{id: "sidecar~127.0.0.1~checkout-1.default~default.svc.cluster.local", namespace: "default"}
}

func inboundName(addr string) string { return InboundListenerPrefix + addr }

// serve connects a payments workload that learns its endpoint by asking for
// its inbound listener, and waits for that listener.
func serve(t *testing.T, s *Server, id, addr, version string) (*adsClient, *listener.Listener) {
	t.Helper()
	ctx := testutil.Context(t)
	c := dialADS(t, s, paymentsNode(id, "", version))
	c.subscribe(resource.ListenerType, inboundName(addr))
	r := c.await(ctx, resource.ListenerType, has(inboundName(addr)))
	return c, decode[*listener.Listener](t, r)[inboundName(addr)]
}

func TestInboundListenerRegistersEndpointAndCloseRemovesIt(t *testing.T) {
	s := newTestServer(t)
	ctx := testutil.Context(t)
	// Declared through its bootstrap, the service outlives its endpoints.
	declarePayments(t, s)
	server, inbound := serve(t, s, "payments-1", "127.0.0.1:9001", "v1")

	sa := inbound.GetAddress().GetSocketAddress()
	if sa.GetAddress() != "127.0.0.1" || sa.GetPortValue() != 9001 {
		t.Fatalf("inbound address = %v", sa)
	}
	// PERMISSIVE (the default) is served as mTLS, as istiod does for
	// proxyless workloads, so that it agrees with the clients' auto-mTLS.
	if got := inbound.GetFilterChains()[0].GetName(); got != "inbound-mtls" {
		t.Fatalf("default (PERMISSIVE) chain = %q, want inbound-mtls", got)
	}
	var manager hcm.HttpConnectionManager
	if err := inbound.GetFilterChains()[0].GetFilters()[0].GetTypedConfig().UnmarshalTo(&manager); err != nil {
		t.Fatal(err)
	}
	vh := manager.GetRouteConfig().GetVirtualHosts()[0]
	if !slices.Equal(vh.GetDomains(), []string{"*"}) || vh.GetRoutes()[0].GetNonForwardingAction() == nil {
		t.Fatalf("inbound route config = %v", manager.GetRouteConfig())
	}

	client := dialADS(t, s, clientNode())
	client.subscribe(resource.ListenerType, paymentsListener)
	lr := client.await(ctx, resource.ListenerType, has(paymentsListener))
	l := decode[*listener.Listener](t, lr)[paymentsListener]
	var api hcm.HttpConnectionManager
	if err := l.GetApiListener().GetApiListener().UnmarshalTo(&api); err != nil {
		t.Fatal(err)
	}
	if api.GetRds().GetRouteConfigName() != paymentsListener {
		t.Fatalf("rds name = %q", api.GetRds().GetRouteConfigName())
	}
	filters := api.GetHttpFilters()
	if len(filters) != 2 || filters[0].GetName() != faultFilterName || filters[1].GetName() != routerFilterName ||
		filters[1].GetTypedConfig().GetTypeUrl() != "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router" {
		t.Fatalf("http filters = %v", filters)
	}

	client.subscribe(resource.ClusterType, paymentsCluster)
	cr := client.await(ctx, resource.ClusterType, has(paymentsCluster))
	c := decode[*cluster.Cluster](t, cr)[paymentsCluster]
	if c.GetEdsClusterConfig().GetServiceName() != paymentsCluster || c.GetLbPolicy() != cluster.Cluster_ROUND_ROBIN {
		t.Fatalf("cluster = %v", c)
	}
	client.subscribe(resource.EndpointType, paymentsCluster)
	client.await(ctx, resource.EndpointType, func(r *discovery.DiscoveryResponse) bool {
		cla, ok := decode[*endpointv3.ClusterLoadAssignment](t, r)[paymentsCluster]
		return ok && slices.Equal(endpointAddrs(cla), []string{"127.0.0.1:9001"})
	})

	server.close()
	client.await(ctx, resource.EndpointType, func(r *discovery.DiscoveryResponse) bool {
		cla, ok := decode[*endpointv3.ClusterLoadAssignment](t, r)[paymentsCluster]
		return ok && len(endpointAddrs(cla)) == 0
	})
}

func TestMeshAddressMetadataRegistersEndpoint(t *testing.T) {
	s := newTestServer(t)
	ctx := testutil.Context(t)
	server := dialADS(t, s, paymentsNode("payments-1", "127.0.0.1:9005", "v1"))
	server.subscribe(resource.ClusterType) // any request registers the node
	client := dialADS(t, s, clientNode())
	client.subscribe(resource.EndpointType, paymentsCluster)
	client.await(ctx, resource.EndpointType, func(r *discovery.DiscoveryResponse) bool {
		cla, ok := decode[*endpointv3.ClusterLoadAssignment](t, r)[paymentsCluster]
		return ok && slices.Equal(endpointAddrs(cla), []string{"127.0.0.1:9005"})
	})
}

const subsetsYAML = `
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: payments}
spec:
  host: payments
  subsets:
  - name: v1
    labels: {version: v1}
  - name: v2
    labels: {version: v2}
`

func vsYAML(w1, w2 int) string {
	return `
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: payments, namespace: default}
spec:
  hosts: [payments]
  http:
  - match:
    - headers: {x-canary: {exact: "yes"}}
    route:
    - destination: {host: payments, subset: v2}
  - route:
    - destination: {host: payments, subset: v1}
      weight: ` + itoa(w1) + `
    - destination: {host: payments, subset: v2}
      weight: ` + itoa(w2) + `
`
}

func itoa(i int) string { return strings.TrimSpace(strings.Repeat(" ", 0) + fmtInt(i)) }

func fmtInt(i int) string {
	if i == 0 {
		return "0"
	}
	neg := i < 0
	if neg {
		i = -i
	}
	var b []byte
	for i > 0 {
		b = append([]byte{byte('0' + i%10)}, b...)
		i /= 10
	}
	if neg {
		return "-" + string(b)
	}
	return string(b)
}

func declarePayments(t *testing.T, s *Server) {
	t.Helper()
	for _, w := range []Workload{
		{Name: "payments-v1", Service: "payments", Port: 8080, Labels: map[string]string{"version": "v1"}},
		{Name: "payments-v2", Service: "payments", Port: 8080, Labels: map[string]string{"version": "v2"}},
	} {
		if _, err := s.BootstrapJSON(w, t.TempDir()); err != nil {
			t.Fatal(err)
		}
	}
}

func weights(t *testing.T, r *discovery.DiscoveryResponse) map[string]uint32 {
	rc := decode[*route.RouteConfiguration](t, r)[paymentsListener]
	if rc == nil {
		return nil
	}
	routes := rc.GetVirtualHosts()[0].GetRoutes()
	out := map[string]uint32{}
	for _, r := range routes {
		for _, wc := range r.GetRoute().GetWeightedClusters().GetClusters() {
			out[wc.GetName()] = wc.GetWeight().GetValue()
		}
	}
	return out
}

func TestVirtualServiceWeightsAndUpdate(t *testing.T) {
	s := newTestServer(t)
	ctx := testutil.Context(t)
	declarePayments(t, s)
	if err := s.Apply([]byte(subsetsYAML + "---" + vsYAML(90, 10))); err != nil {
		t.Fatal(err)
	}
	client := dialADS(t, s, clientNode())
	client.subscribe(resource.RouteType, paymentsListener)
	v1, v2 := "outbound|8080|v1|"+paymentsHost, "outbound|8080|v2|"+paymentsHost
	first := client.await(ctx, resource.RouteType, func(r *discovery.DiscoveryResponse) bool {
		w := weights(t, r)
		return w[v1] == 90 && w[v2] == 10
	})
	rc := decode[*route.RouteConfiguration](t, first)[paymentsListener]
	vh := rc.GetVirtualHosts()[0]
	if !slices.Contains(vh.GetDomains(), paymentsHost) || !slices.Contains(vh.GetDomains(), paymentsListener) {
		t.Fatalf("domains = %v", vh.GetDomains())
	}
	routes := vh.GetRoutes()
	if h := routes[0].GetMatch().GetHeaders(); len(h) != 1 || h[0].GetName() != "x-canary" || routes[0].GetRoute().GetCluster() != v2 {
		t.Fatalf("header route = %v", routes[0])
	}
	last := routes[len(routes)-1]
	if last.GetMatch().GetPrefix() != "/" {
		t.Fatalf("last route = %v", last)
	}

	if err := s.Apply([]byte(vsYAML(100, 0))); err != nil {
		t.Fatal(err)
	}
	second := client.await(ctx, resource.RouteType, func(r *discovery.DiscoveryResponse) bool {
		w := weights(t, r)
		_, zeroLeg := w[v2]
		return w[v1] == 100 && zeroLeg && w[v2] == 0
	})
	if second.GetVersionInfo() == first.GetVersionInfo() {
		t.Fatalf("version did not change: %q", second.GetVersionInfo())
	}
}

func TestSubsetsFilterEndpointsByLabels(t *testing.T) {
	s := newTestServer(t)
	ctx := testutil.Context(t)
	if err := s.Apply([]byte(subsetsYAML)); err != nil {
		t.Fatal(err)
	}
	serve(t, s, "payments-1", "127.0.0.1:9001", "v1")
	serve(t, s, "payments-2", "127.0.0.1:9002", "v2")
	client := dialADS(t, s, clientNode())
	v2 := "outbound|8080|v2|" + paymentsHost
	client.subscribe(resource.EndpointType, v2, paymentsCluster)
	client.await(ctx, resource.EndpointType, func(r *discovery.DiscoveryResponse) bool {
		m := decode[*endpointv3.ClusterLoadAssignment](t, r)
		return slices.Equal(endpointAddrs(m[v2]), []string{"127.0.0.1:9002"}) &&
			len(endpointAddrs(m[paymentsCluster])) == 2
	})
}

func TestPeerAuthenticationStrict(t *testing.T) {
	s := newTestServer(t)
	ctx := testutil.Context(t)
	err := s.Apply([]byte(`
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: istio-system}
spec:
  mtls: {mode: STRICT}
`))
	if err != nil {
		t.Fatal(err)
	}
	_, inbound := serve(t, s, "payments-1", "127.0.0.1:9001", "v1")
	chain := inbound.GetFilterChains()[0]
	if chain.GetName() != "inbound-mtls" {
		t.Fatalf("chain = %q", chain.GetName())
	}
	var down tlsv3.DownstreamTlsContext
	if err := chain.GetTransportSocket().GetTypedConfig().UnmarshalTo(&down); err != nil {
		t.Fatal(err)
	}
	if !down.GetRequireClientCertificate().GetValue() ||
		down.GetCommonTlsContext().GetTlsCertificateProviderInstance().GetInstanceName() != "default" ||
		down.GetCommonTlsContext().GetCombinedValidationContext().GetValidationContextCertificateProviderInstance().GetCertificateName() != "ROOTCA" {
		t.Fatalf("downstream tls = %v", &down)
	}

	client := dialADS(t, s, clientNode())
	client.subscribe(resource.ClusterType, paymentsCluster)
	cr := client.await(ctx, resource.ClusterType, has(paymentsCluster))
	var up tlsv3.UpstreamTlsContext
	c := decode[*cluster.Cluster](t, cr)[paymentsCluster]
	if err := c.GetTransportSocket().GetTypedConfig().UnmarshalTo(&up); err != nil {
		t.Fatalf("cluster has no tls: %v", c)
	}
	sans := up.GetCommonTlsContext().GetCombinedValidationContext().GetDefaultValidationContext().GetMatchSubjectAltNames()
	if len(sans) != 1 || sans[0].GetExact() != "spiffe://cluster.local/ns/default/sa/default" {
		t.Fatalf("sans = %v", sans)
	}

	// DISABLE in the namespace overrides the mesh-wide STRICT.
	err = s.Apply([]byte(`
apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: default, namespace: default}
spec:
  mtls: {mode: DISABLE}
`))
	if err != nil {
		t.Fatal(err)
	}
	client.await(ctx, resource.ClusterType, func(r *discovery.DiscoveryResponse) bool {
		c := decode[*cluster.Cluster](t, r)[paymentsCluster]
		return c != nil && c.GetTransportSocket() == nil
	})
}

func TestShortNameListener(t *testing.T) {
	s := newTestServer(t)
	ctx := testutil.Context(t)
	declarePayments(t, s)
	client := dialADS(t, s, clientNode())
	client.subscribe(resource.ListenerType, "payments:8080", "payments.default:8080")
	lr := client.await(ctx, resource.ListenerType, func(r *discovery.DiscoveryResponse) bool {
		return has("payments:8080")(r) && has("payments.default:8080")(r)
	})
	l := decode[*listener.Listener](t, lr)["payments:8080"]
	var api hcm.HttpConnectionManager
	if err := l.GetApiListener().GetApiListener().UnmarshalTo(&api); err != nil {
		t.Fatal(err)
	}
	if api.GetRds().GetRouteConfigName() != paymentsListener {
		t.Fatalf("short-name listener routes to %q", api.GetRds().GetRouteConfigName())
	}
	client.subscribe(resource.RouteType, paymentsListener)
	rr := client.await(ctx, resource.RouteType, has(paymentsListener))
	domains := decode[*route.RouteConfiguration](t, rr)[paymentsListener].GetVirtualHosts()[0].GetDomains()
	if !slices.Contains(domains, "payments:8080") || !slices.Contains(domains, "payments.default:8080") {
		t.Fatalf("domains = %v", domains)
	}
}

func TestSnapshotHookInjectsResourcesAndNACKIsHeld(t *testing.T) {
	rec := testutil.NewLogs(slog.LevelDebug)
	var calls atomic.Int32
	s := newTestServer(t, WithLogger(slog.New(rec)), WithSnapshotHook(func(nodeID string, res map[string][]types.Resource) {
		calls.Add(1)
		if strings.Contains(nodeID, "checkout") {
			// Invalid on purpose: an EDS cluster without a name.
			res[resource.ClusterType] = append(res[resource.ClusterType], &cluster.Cluster{Name: "injected"})
		}
	}))
	ctx := testutil.Context(t)
	client := dialADS(t, s, clientNode())
	client.subscribe(resource.ClusterType, "injected", paymentsCluster)
	var bad *discovery.DiscoveryResponse
	select {
	case bad = <-client.resps:
	case <-ctx.Done():
		t.Fatal("no response")
	}
	if !has("injected")(bad) {
		t.Fatalf("hook resource missing from %v", bad)
	}
	// NACK: keep the last accepted version (none) and name the nonce.
	client.mu.Lock()
	client.nonces[resource.ClusterType] = bad.GetNonce()
	client.mu.Unlock()
	client.send(resource.ClusterType, []string{"injected", paymentsCluster}, "cluster injected: rejected")
	rec.Await(ctx, t, "NACK")
	// proxy-status shows the NACK: the type, the version rejected, the
	// last one running (none) and the client's error in full.
	var cds *TypeStatus
	for _, p := range s.ProxyStatus() {
		for i, ty := range p.Types {
			if p.Node == clientNode().id && ty.Type == "CDS" {
				cds = &p.Types[i]
			}
		}
	}
	if cds == nil || cds.State != "NACKED" || cds.Error != "cluster injected: rejected" || cds.Sent != bad.GetVersionInfo() || cds.Acked != "" {
		t.Fatalf("proxy status of the NACKed CDS: %+v, want NACKED at %q with the error in full", cds, bad.GetVersionInfo())
	}

	// A config change produces a new version; had the server resent the
	// rejected one, it would arrive first on the ordered stream.
	declarePayments(t, s)
	select {
	case next := <-client.resps:
		if next.GetVersionInfo() == bad.GetVersionInfo() {
			t.Fatalf("server resent the rejected version %q", bad.GetVersionInfo())
		}
		if !has(paymentsCluster)(next) {
			t.Fatalf("next response lacks %s", paymentsCluster)
		}
	case <-ctx.Done():
		t.Fatal("no response after config change")
	}
	if calls.Load() == 0 {
		t.Fatal("hook never called")
	}
}

// A serving workload whose stream closes keeps its endpoints for the grace
// period: it may only be reconnecting, and its clients must not notice.
func TestEndpointsOutliveTheirStreamForTheGracePeriod(t *testing.T) {
	s := newTestServer(t, WithEndpointGracePeriod(time.Minute))
	ctx := testutil.Context(t)
	declarePayments(t, s)
	server, _ := serve(t, s, "payments-1", "127.0.0.1:9001", "v1")
	server.close()
	for departed := 0; departed == 0; {
		s.mu.Lock()
		departed = len(s.departed)
		s.mu.Unlock()
		select {
		case <-ctx.Done():
			t.Fatal("the control plane never saw the workload's stream close")
		case <-time.After(5 * time.Millisecond):
		}
	}
	client := dialADS(t, s, clientNode())
	client.subscribe(resource.EndpointType, paymentsCluster)
	client.await(ctx, resource.EndpointType, func(r *discovery.DiscoveryResponse) bool {
		cla, ok := decode[*endpointv3.ClusterLoadAssignment](t, r)[paymentsCluster]
		return ok && slices.Equal(endpointAddrs(cla), []string{"127.0.0.1:9001"})
	})
	// Back within the period: the departure is forgotten.
	serve(t, s, "payments-1", "127.0.0.1:9001", "v1")
	s.mu.Lock()
	left := len(s.departed)
	s.mu.Unlock()
	if left != 0 {
		t.Fatalf("%d departures left after the workload came back", left)
	}
}
