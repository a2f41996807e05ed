package balancer

import (
	"fmt"
	"maps"
	"math"
	"slices"
	"testing"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"mesh/internal/testutil"
	"mesh/xdsclient"
	"mesh/xdsclient/xdstest"
)

// TestDeltaFlipsAgainstIstiodNonceRules flips a canary 90/10 -> 0/100 ->
// 90/10 under load, 200 times, against a delta server that drops a request
// with a stale nonce whole, as istiod does. The 0/100 route names v2 only,
// as istiod writes it, so each flip unsubscribes and resubscribes v1's
// cluster and endpoints. No RPC may fail, and after every flip the
// server's view of the subscriptions must equal the client's.
func TestDeltaFlipsAgainstIstiodNonceRules(t *testing.T) {
	checkNoLeaks(t)
	ctx := testutil.Context(t)
	const flips = 200

	v1, v2 := startBackend(t, "v1"), startBackend(t, "v2")
	srv := xdstest.NewStrictServer(t)
	client, err := xdsclient.New(srv.Bootstrap("node-1", true), xdsclient.WithResourceTimeout(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.Close() })

	clusters := []types.Resource{xdstest.EDSCluster("v1", false), xdstest.EDSCluster("v2", false)}
	endpoints := []types.Resource{xdstest.Endpoints("v1", v1.addr), xdstest.Endpoints("v2", v2.addr)}
	canary := func(weights ...xdsclient.ClusterWeight) {
		srv.Set(t, []types.Resource{xdstest.ClientListener(testTarget, "rc")},
			[]types.Resource{xdstest.RouteConfig("rc", "*", weights...)}, clusters, endpoints)
	}
	split := []xdsclient.ClusterWeight{w("v1", 90), w("v2", 10)}
	canary(split...)

	e := newTestEnvWith(t, client)
	if _, err := e.call(ctx); err != nil {
		t.Fatalf("first RPC: %v", err)
	}

	load := startLoad(ctx, e.call, 4, math.MaxInt64)
	finished := false
	defer func() {
		if !finished {
			close(load.stop)
			load.wg.Wait()
		}
	}()

	// want is what the client must watch in each state.
	want := func(withV1 bool) map[string][]string {
		cl := []string{"v2"}
		if withV1 {
			cl = []string{"v1", "v2"}
		}
		return map[string][]string{
			resource.ListenerType: {testTarget}, resource.RouteType: {"rc"},
			resource.ClusterType: cl, resource.EndpointType: cl,
		}
	}
	clientView := func() map[string][]string {
		view := map[string][]string{}
		for _, rs := range client.Dump() {
			view[rs.TypeURL] = append(view[rs.TypeURL], rs.Name)
		}
		return view
	}
	serverView := func() map[string][]string {
		view := map[string][]string{}
		for _, typ := range pushOrder() {
			if names := srv.Subscribed(typ); len(names) > 0 {
				view[typ] = names
			}
		}
		return view
	}
	equal := func(a, b map[string][]string) bool {
		return maps.EqualFunc(a, b, func(x, y []string) bool { return slices.Equal(x, y) })
	}

	for i := range flips {
		withV1 := i%2 == 1
		if withV1 {
			canary(split...)
		} else {
			canary(w("v2", 100))
		}
		// Pushes that cross the client's requests make its nonces stale.
		srv.Push()
		target := want(withV1)
		testutil.WaitFor(ctx, t, fmt.Sprintf("flip %d: the client to watch %v (it watches %v)", i, target, clientView()), func() bool {
			return equal(clientView(), target)
		})
		testutil.WaitFor(ctx, t, fmt.Sprintf("flip %d: the server's subscriptions to equal the client's %v", i, target), func() bool {
			return equal(serverView(), target)
		})
		start := load.sent.Load()
		testutil.WaitFor(ctx, t, fmt.Sprintf("flip %d: RPCs to be served", i), func() bool { return load.sent.Load() > start+4 || load.failures.Load() > 0 })
		if n := load.failures.Load(); n > 0 {
			t.Fatalf("flip %d: %d RPCs failed, first: %v", i, n, load.firstErr.Load())
		}
	}
	st := srv.Stats()
	if len(st.Violations) > 0 {
		t.Errorf("requests that break istiod's rules: %q", st.Violations)
	}
	t.Logf("%d RPCs sent; server saw %d requests, %d with stale nonces, %d NACKs", load.sent.Load(), st.Requests, st.ExpiredNonces, st.NACKs)
	finished = true
	load.finish(t)
}

func pushOrder() []string {
	return []string{resource.ListenerType, resource.RouteType, resource.ClusterType, resource.EndpointType}
}
