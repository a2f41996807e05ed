package balancer

import (
	"fmt"
	"strings"
	"testing"
	"time"

	clusterpb "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"

	"mesh/internal/testutil"
	"mesh/xdsclient"
	"mesh/xdsclient/xdstest"
)

func newStrictXDS(t *testing.T, delta bool, timeout time.Duration) (*xdstest.StrictServer, *xdsclient.Client) {
	t.Helper()
	srv := xdstest.NewStrictServer(t)
	client, err := xdsclient.New(srv.Bootstrap("node-1", delta), xdsclient.WithResourceTimeout(timeout))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close() })
	return srv, client
}

func watches(client *xdsclient.Client, typ, name string) bool {
	for _, rs := range client.Dump() {
		if rs.Type == typ && rs.Name == name {
			return true
		}
	}
	return false
}

// TestRouteToUnknownClusterKeepsPreviousTable: a route naming a cluster
// the control plane has not sent yet leaves the previous table serving
// until the cluster arrives; when its does-not-exist timer fires instead,
// RPCs fail naming it. Over delta the server says at once that it lacks
// the cluster (as istiod does); that too waits for the timer.
func TestRouteToUnknownClusterKeepsPreviousTable(t *testing.T) {
	checkNoLeaks(t)
	for _, delta := range []bool{false, true} {
		t.Run(fmt.Sprintf("delta=%t", delta), func(t *testing.T) { routeToUnknownCluster(t, delta) })
	}
}

func routeToUnknownCluster(t *testing.T, delta bool) {
	ctx := testutil.Context(t)
	a, b := startBackend(t, "a"), startBackend(t, "b")
	srv, client := newStrictXDS(t, delta, time.Hour)
	listener := []types.Resource{xdstest.ClientListener(testTarget, "rc")}
	routeTo := func(cluster string) []types.Resource {
		return []types.Resource{xdstest.RouteConfig("rc", "*", w(cluster, 1))}
	}
	clusterA, epsA := xdstest.EDSCluster("a", false), xdstest.Endpoints("a", a.addr)
	srv.Set(t, listener, routeTo("a"), []types.Resource{clusterA}, []types.Resource{epsA})
	e := newTestEnvWith(t, client)
	if got, err := e.call(ctx); err != nil || got != "a" {
		t.Fatalf("first RPC: %q %v", got, err)
	}

	srv.Set(t, listener, routeTo("b"), []types.Resource{clusterA}, []types.Resource{epsA})
	testutil.WaitFor(ctx, t, "the client to watch cluster b", func() bool { return watches(client, "cluster", "b") })
	for i := range 50 {
		srv.Push() // CDS responses without b: not a deletion
		if got, err := e.call(ctx); err != nil || got != "a" {
			t.Fatalf("RPC %d while b is unknown: %q %v, want the previous table (a)", i, got, err)
		}
	}
	srv.Set(t, listener, routeTo("b"), []types.Resource{clusterA, xdstest.EDSCluster("b", false)},
		[]types.Resource{epsA, xdstest.Endpoints("b", b.addr)})
	testutil.WaitFor(ctx, t, "RPCs to reach b", func() bool {
		got, err := e.call(ctx)
		if err != nil {
			t.Fatalf("RPC while b arrives: %v; dump %+v; server CDS %v EDS %v", err, client.Dump(), srv.Subscribed("type.googleapis.com/envoy.config.cluster.v3.Cluster"), srv.Subscribed("type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment"))
		}
		return got == "b"
	})

	// A channel whose client gives up on unknown resources quickly: the
	// route to a cluster that never comes fails, naming it.
	srv2, client2 := newStrictXDS(t, delta, 20*time.Millisecond)
	srv2.Set(t, listener, routeTo("a"), []types.Resource{clusterA}, []types.Resource{epsA})
	e2 := newTestEnvWith(t, client2)
	// On a busy machine the first responses can take longer than that
	// client's 20 ms: it then takes the listener for missing until they
	// arrive, as gRFC A27 says, and serves once they have.
	testutil.WaitFor(ctx, t, "the first RPC of the quick client", func() bool {
		_, err := e2.call(ctx)
		return err == nil
	})
	srv2.Set(t, listener, routeTo("never"), []types.Resource{clusterA}, []types.Resource{epsA})
	testutil.WaitFor(ctx, t, "RPCs to fail naming the missing cluster", func() bool {
		_, err := e2.call(ctx)
		if err != nil && !strings.Contains(err.Error(), `"never"`) {
			t.Fatalf("RPC error %v does not name the cluster", err)
		}
		return err != nil
	})
}

// TestNACKedClusterFailsRPCsAtOnce: RPCs routed to a cluster whose only
// version was rejected fail at once with the rejection's reason, on the
// first channel and on one opened later.
func TestNACKedClusterFailsRPCsAtOnce(t *testing.T) {
	checkNoLeaks(t)
	ctx := testutil.Context(t)
	srv, client := newStrictXDS(t, false, time.Hour)
	bad := xdstest.EDSCluster("bad", false)
	bad.LbPolicy = clusterpb.Cluster_MAGLEV
	srv.Set(t, []types.Resource{xdstest.ClientListener(testTarget, "rc")},
		[]types.Resource{xdstest.RouteConfig("rc", "*", w("bad", 1))},
		[]types.Resource{bad}, nil)
	for i := range 2 {
		e := newTestEnvWith(t, client)
		_, err := e.call(ctx)
		if err == nil || !strings.Contains(err.Error(), "lb_policy") || !strings.Contains(err.Error(), "bad") {
			t.Fatalf("channel %d: RPC error %v, want the NACK's reason naming the cluster", i, err)
		}
		if ctx.Err() != nil {
			t.Fatalf("channel %d: the RPC waited for the hang guard", i)
		}
	}
}
