package xdsclient_test

import (
	"errors"
	"slices"
	"strings"
	"testing"

	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"

	"mesh/internal/testutil"
	"mesh/xdsclient"
	"mesh/xdsclient/xdstest"
)

const typeEDS = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"

func newDeltaClient(t *testing.T, srv *xdstest.Server, opts ...xdsclient.Option) *xdsclient.Client {
	t.Helper()
	bs := srv.Bootstrap(nodeID)
	bs.Servers[0].ServerFeatures = []string{xdsclient.ServerFeatureDelta}
	opts = append([]xdsclient.Option{xdsclient.WithBackoff(fastBackoff)}, opts...)
	c, err := xdsclient.New(bs, opts...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func statusOf(t *testing.T, c *xdsclient.Client, typ, name string) xdsclient.ResourceStatus {
	t.Helper()
	for _, rs := range c.Dump() {
		if rs.Type == typ && rs.Name == name {
			return rs
		}
	}
	t.Fatalf("no %s %q in Dump: %+v", typ, name, c.Dump())
	return xdsclient.ResourceStatus{}
}

func TestDeltaSubscribeUpdateUnsubscribeRemove(t *testing.T) {
	ctx := testutil.Context(t)
	srv := xdstest.NewServer(t)
	setMesh(t, srv, []xdsclient.ClusterWeight{{Name: clusterV1, Weight: 1}}, "127.0.0.1:8080")
	c := newDeltaClient(t, srv)

	cds := newEvents[*xdsclient.Cluster]()
	c.WatchCluster(clusterV1, cds.fn)
	eds1, eds2 := newEvents[*xdsclient.Endpoints](), newEvents[*xdsclient.Endpoints]()
	c.WatchEndpoints(clusterV1, eds1.fn)
	cancel2 := c.WatchEndpoints(clusterV2, eds2.fn)

	if ev := next(ctx, t, cds, nil); !isValue(ev) || ev.Resource.Name != clusterV1 {
		t.Fatalf("cluster event = %+v", ev)
	}
	if ev := next(ctx, t, eds1, nil); !isValue(ev) || ev.Resource.Localities[0].Endpoints[0].Address != "127.0.0.1:8080" {
		t.Fatalf("endpoints v1 event = %+v", ev)
	}
	if ev := next(ctx, t, eds2, nil); !isValue(ev) || ev.Resource.Localities[0].Endpoints[0].Address != "127.0.0.2:9000" {
		t.Fatalf("endpoints v2 event = %+v", ev)
	}
	// The stream is delta: EDS names were subscribed, never sent as a SotW list.
	if _, err := srv.WaitForDeltaRequest(ctx, func(r *discoverypb.DeltaDiscoveryRequest) bool {
		return r.GetTypeUrl() == typeEDS && slices.Contains(r.GetResourceNamesSubscribe(), clusterV1)
	}); err != nil {
		t.Fatal(err)
	}
	if first := srv.DeltaRequests()[0]; first.GetNode().GetId() != nodeID {
		t.Fatalf("first delta request has no node: %v", first)
	}
	if n := len(srv.Requests()); n != 0 {
		t.Fatalf("%d state-of-the-world requests on a delta client", n)
	}
	// Per-resource versions: each resource carries the server's own.
	v1, v2 := statusOf(t, c, "cluster_load_assignment", clusterV1), statusOf(t, c, "cluster_load_assignment", clusterV2)
	if v1.Version == "" || v2.Version == "" || v1.Version == v2.Version || v1.Status != xdsclient.StatusAcked {
		t.Fatalf("per-resource versions: %+v / %+v", v1, v2)
	}

	// Only the changed resource is pushed: clusterV2's watcher hears nothing.
	setMesh(t, srv, []xdsclient.ClusterWeight{{Name: clusterV1, Weight: 1}}, "127.0.0.1:9090")
	if ev := next(ctx, t, eds1, nil); !isValue(ev) || ev.Resource.Localities[0].Endpoints[0].Address != "127.0.0.1:9090" {
		t.Fatalf("updated endpoints event = %+v", ev)
	}
	if ev, ok := eds2.pop(); ok {
		t.Fatalf("unchanged resource re-delivered: %+v", ev)
	}
	if got := statusOf(t, c, "cluster_load_assignment", clusterV1).Version; got == v1.Version {
		t.Fatalf("version did not change on update: %q", got)
	}

	cancel2()
	if _, err := srv.WaitForDeltaRequest(ctx, func(r *discoverypb.DeltaDiscoveryRequest) bool {
		return r.GetTypeUrl() == typeEDS && slices.Equal(r.GetResourceNamesUnsubscribe(), []string{clusterV2})
	}); err != nil {
		t.Fatal(err)
	}

	// removed_resources means NotFound, and the Dump says where from.
	srv.SetResources(t, nodeID,
		[]types.Resource{xdstest.ClientListener(listenerName, routeName)},
		[]types.Resource{xdstest.RouteConfig(routeName, "payments", xdsclient.ClusterWeight{Name: clusterV1, Weight: 1})},
		nil,
		[]types.Resource{xdstest.Endpoints(clusterV1, "127.0.0.1:9090")},
	)
	if ev := next(ctx, t, cds, nil); !ev.NotFound {
		t.Fatalf("cluster event after removal = %+v", ev)
	}
	rs := statusOf(t, c, "cluster", clusterV1)
	if rs.Status != xdsclient.StatusDoesNotExist || !errors.Is(rs.Error, xdsclient.ErrResourceNotFound) ||
		!strings.Contains(rs.Error.Error(), clusterV1) || !strings.Contains(rs.Error.Error(), srv.Addr()) || !strings.Contains(rs.Error.Error(), "cluster") {
		t.Fatalf("removed cluster status = %+v", rs)
	}
}

func TestDeltaNACKByNonceKeepsLastGood(t *testing.T) {
	ctx := testutil.Context(t)
	srv := xdstest.NewServer(t)
	setMesh(t, srv, []xdsclient.ClusterWeight{{Name: clusterV1, Weight: 1}}, "127.0.0.1:8080")
	c := newDeltaClient(t, srv)
	eds := newEvents[*xdsclient.Endpoints]()
	c.WatchEndpoints(clusterV1, eds.fn)
	if ev := next(ctx, t, eds, nil); !isValue(ev) {
		t.Fatalf("first event = %+v", ev)
	}
	good := statusOf(t, c, "cluster_load_assignment", clusterV1).Version

	setMesh(t, srv, []xdsclient.ClusterWeight{{Name: clusterV1, Weight: 1}}, "127.0.0.1:0")
	ev := next(ctx, t, eds, nil)
	if !errors.Is(ev.Err, xdsclient.ErrResourceRejected) || !strings.Contains(ev.Err.Error(), "port_value") {
		t.Fatalf("bad update event = %+v", ev)
	}
	nack, err := srv.WaitForDeltaRequest(ctx, func(r *discoverypb.DeltaDiscoveryRequest) bool {
		return r.GetTypeUrl() == typeEDS && r.GetErrorDetail() != nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if nack.GetResponseNonce() == "" || !strings.Contains(nack.GetErrorDetail().GetMessage(), "lb_endpoints[0].endpoint.address.socket_address.port_value") {
		t.Fatalf("NACK = %v", nack)
	}
	rs := statusOf(t, c, "cluster_load_assignment", clusterV1)
	if rs.Status != xdsclient.StatusNACKed || rs.Version != good || rs.Error == nil {
		t.Fatalf("status after NACK = %+v (good version %q)", rs, good)
	}
	// The ACK of a good response carries its nonce and no error.
	setMesh(t, srv, []xdsclient.ClusterWeight{{Name: clusterV1, Weight: 1}}, "127.0.0.1:8181")
	if ev := next(ctx, t, eds, nil); !isValue(ev) || ev.Resource.Localities[0].Endpoints[0].Address != "127.0.0.1:8181" {
		t.Fatalf("recovered event = %+v", ev)
	}
	if rs := statusOf(t, c, "cluster_load_assignment", clusterV1); rs.Status != xdsclient.StatusAcked || rs.Error != nil {
		t.Fatalf("status after recovery = %+v", rs)
	}
}

func TestDeltaReconnectSendsInitialResourceVersions(t *testing.T) {
	ctx := testutil.Context(t)
	srv := xdstest.NewServer(t)
	setMesh(t, srv, []xdsclient.ClusterWeight{{Name: clusterV1, Weight: 1}}, "127.0.0.1:8080")
	c := newDeltaClient(t, srv)
	eds := newEvents[*xdsclient.Endpoints]()
	c.WatchEndpoints(clusterV1, eds.fn)
	if ev := next(ctx, t, eds, nil); !isValue(ev) {
		t.Fatalf("first event = %+v", ev)
	}
	version := statusOf(t, c, "cluster_load_assignment", clusterV1).Version
	before := len(srv.DeltaRequests())

	srv.Restart(t)
	req, err := srv.WaitForDeltaRequest(ctx, func(r *discoverypb.DeltaDiscoveryRequest) bool {
		return r.GetTypeUrl() == typeEDS && len(r.GetInitialResourceVersions()) > 0
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := req.GetInitialResourceVersions()[clusterV1]; got != version {
		t.Fatalf("initial_resource_versions[%s] = %q, want %q", clusterV1, got, version)
	}
	if !slices.Contains(req.GetResourceNamesSubscribe(), clusterV1) {
		t.Fatalf("resubscription = %v", req)
	}
	if len(srv.DeltaRequests()) <= before {
		t.Fatal("no request after restart")
	}
	// The server knows the version: nothing is re-delivered, and the
	// resource keeps serving.
	if ev := next(ctx, t, eds, nil); ev.Err == nil {
		t.Fatalf("expected the stream error event first, got %+v", ev)
	}
	if rs := statusOf(t, c, "cluster_load_assignment", clusterV1); rs.Status != xdsclient.StatusAcked || rs.Version != version {
		t.Fatalf("status after reconnect = %+v", rs)
	}
}
