package balancer

import (
	"fmt"
	"math"
	"net/http"
	"net/url"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc/metadata"

	"mesh/internal/testutil"
	"mesh/xdsclient"
)

func counters(n int) []*atomic.Int64 {
	out := make([]*atomic.Int64, n)
	for i := range out {
		out[i] = new(atomic.Int64)
	}
	return out
}

func TestLeastRequestPrefersTheLessLoaded(t *testing.T) {
	active := counters(2)
	active[0].Store(100)
	c := newEndpointChooser(xdsclient.LBLeastRequest, []string{"a:1", "b:1"}, active)
	var next atomic.Uint32
	const n = 4000
	idle := 0
	for range n {
		if c.choose(2, &next, 0, false) == 1 {
			idle++
		}
	}
	// P2C picks the busy endpoint only when both samples land on it: 1/4.
	p := 0.75
	sigma := math.Sqrt(n * p * (1 - p))
	if math.Abs(float64(idle)-n*p) > 5*sigma {
		t.Errorf("idle endpoint chosen %d of %d times, want %.0f ± %.0f", idle, n, n*p, 5*sigma)
	}
}

func TestRingHashIsConsistent(t *testing.T) {
	addrs := []string{"10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"}
	three := newEndpointChooser(xdsclient.LBRingHash, addrs, counters(3))
	two := newEndpointChooser(xdsclient.LBRingHash, addrs[:2], counters(2))
	var next atomic.Uint32
	const keys = 3000
	perEndpoint := make([]int, 3)
	moved := 0
	for k := range keys {
		h := hashString(fnvOffset, fmt.Sprintf("user-%d", k))
		i := three.choose(3, &next, h, true)
		if again := three.choose(3, &next, h, true); again != i {
			t.Fatalf("key %d went to %d, then %d", k, i, again)
		}
		perEndpoint[i]++
		// Dropping endpoint 2 moves only the keys it had.
		if j := two.choose(2, &next, h, true); i != 2 && j != i {
			moved++
		}
	}
	if moved != 0 {
		t.Errorf("%d keys of surviving endpoints moved when another endpoint left", moved)
	}
	for i, got := range perEndpoint {
		// A 1024-entry ring shares keys roughly equally; allow a wide band.
		if got < keys/6 || got > keys/2 {
			t.Errorf("endpoint %d got %d of %d keys (all: %v)", i, got, keys, perEndpoint)
		}
	}
}

func TestRequestHash(t *testing.T) {
	headers := HTTPHeaders(http.Header{"X-User": {"alice"}, "X-Multi": {"a", "b"}})
	query := url.Values{"user": {"bob"}}
	header := xdsclient.HashPolicy{Kind: xdsclient.HashHeader, Name: "x-user"}
	missing := xdsclient.HashPolicy{Kind: xdsclient.HashHeader, Name: "x-absent"}
	channel := xdsclient.HashPolicy{Kind: xdsclient.HashChannelID}

	if _, ok := requestHash([]xdsclient.HashPolicy{missing}, headers, query, 7); ok {
		t.Error("a missing header produced a hash")
	}
	h1, ok1 := requestHash([]xdsclient.HashPolicy{header}, headers, query, 7)
	h2, ok2 := requestHash([]xdsclient.HashPolicy{missing, header}, headers, query, 8)
	if !ok1 || !ok2 || h1 != h2 {
		t.Errorf("header hash = %x/%v and %x/%v, want equal", h1, ok1, h2, ok2)
	}
	terminal := header
	terminal.Terminal = true
	h3, _ := requestHash([]xdsclient.HashPolicy{terminal, channel}, headers, query, 7)
	if h3 != h1 {
		t.Errorf("a terminal policy did not end the list")
	}
	h4, _ := requestHash([]xdsclient.HashPolicy{header, channel}, headers, query, 7)
	if h4 == h1 {
		t.Errorf("a second policy did not change the hash")
	}
	hq, okq := requestHash([]xdsclient.HashPolicy{{Kind: xdsclient.HashQueryParameter, Name: "user"}}, headers, query, 7)
	if !okq || hq != mix64(hashString(fnvOffset, "bob")) {
		t.Errorf("query parameter hash = %x/%v", hq, okq)
	}
	hm, _ := requestHash([]xdsclient.HashPolicy{{Kind: xdsclient.HashHeader, Name: "x-multi"}}, headers, query, 7)
	if hm != mix64(hashString(fnvOffset, "a,b")) {
		t.Errorf("a repeated header does not hash as its joined values")
	}
}

func TestGRPCRingHashKeepsAUserOnOneBackend(t *testing.T) {
	ctx := testutil.Context(t)
	e := newTestEnv(t)
	backends := []*backend{startBackend(t, "a"), startBackend(t, "b"), startBackend(t, "c")}
	e.serve("c", backends...)
	cluster := testCluster("c")
	cluster.LBPolicy = xdsclient.LBRingHash
	e.xds.clusters.set("c", cluster)
	e.routeAction(xdsclient.RouteAction{Cluster: "c", HashPolicies: []xdsclient.HashPolicy{{Kind: xdsclient.HashHeader, Name: "x-user"}}})
	// Without x-user the hash is random: once every backend served, every
	// one is READY and on the ring.
	warmUp(ctx, t, e.call, "a", "b", "c")
	testutil.WaitFor(ctx, t, "the ring hash table", func() bool {
		r := e.builderRoute(t)
		return r != nil && len(r.Action.HashPolicies) == 1
	})
	used := map[string]bool{}
	for u := range 30 {
		userCtx := metadata.AppendToOutgoingContext(ctx, "x-user", fmt.Sprintf("user-%d", u))
		first, err := e.call(userCtx)
		if err != nil {
			t.Fatal(err)
		}
		for range 5 {
			if got, err := e.call(userCtx); err != nil || got != first {
				t.Fatalf("user-%d went to %s, then %s (%v)", u, first, got, err)
			}
		}
		used[first] = true
	}
	if len(used) < 2 {
		t.Errorf("30 users all hashed to %v", used)
	}
}

func TestGRPCLeastRequestServes(t *testing.T) {
	ctx := testutil.Context(t)
	e := newTestEnv(t)
	a, b := startBackend(t, "a"), startBackend(t, "b")
	e.serve("c", a, b)
	cluster := testCluster("c")
	cluster.LBPolicy = xdsclient.LBLeastRequest
	e.xds.clusters.set("c", cluster)
	e.route(w("c", 1))
	warmUp(ctx, t, e.call, "a", "b")
	counts := callMany(ctx, t, e.call, 400, 4)
	if counts["a"] == 0 || counts["b"] == 0 {
		t.Errorf("least_request used only %v", counts)
	}
}

func TestRoundTripperRingHash(t *testing.T) {
	ctx := testutil.Context(t)
	e := newHTTPEnv(t)
	var backends []*httpBackend
	for _, name := range []string{"a", "b", "c"} {
		backends = append(backends, startHTTPBackend(t, name, http1Plain, nil))
	}
	e.serve("cluster-a", nil, backends...)
	cluster := testCluster("cluster-a")
	cluster.LBPolicy = xdsclient.LBRingHash
	e.xds.clusters.set("cluster-a", cluster)
	e.route(actionRouteConfig("rc", xdsclient.RouteAction{Cluster: "cluster-a",
		HashPolicies: []xdsclient.HashPolicy{{Kind: xdsclient.HashQueryParameter, Name: "user"}}}))
	testutil.WaitFor(ctx, t, "the ring hash table", func() bool {
		ch, err := e.rt.channel(testTarget)
		if err != nil {
			return false
		}
		tbl := ch.table.Load()
		return tbl != nil && tbl.err == nil && tbl.clusters[0].chooser.policy == xdsclient.LBRingHash
	})
	used := map[string]bool{}
	for u := range 30 {
		path := fmt.Sprintf("/?user=u%d", u)
		first, _, err := e.get(ctx, path)
		if err != nil {
			t.Fatal(err)
		}
		for range 5 {
			if got, _, err := e.get(ctx, path); err != nil || got != first {
				t.Fatalf("user u%d went to %s, then %s (%v)", u, first, got, err)
			}
		}
		used[first] = true
	}
	if len(used) < 2 {
		t.Errorf("30 users all hashed to %v", used)
	}
}
