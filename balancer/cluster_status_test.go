package balancer

import (
	"context"
	"net"
	"net/http"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"

	"mesh/internal/testutil"
	"mesh/xdsclient"
)

// findCluster returns the state of cluster name of channel, or fails.
func findCluster(t *testing.T, states []ClusterState, channel, name string) ClusterState {
	t.Helper()
	for _, cs := range states {
		if cs.Channel == channel && cs.Name == name {
			return cs
		}
	}
	t.Fatalf("no cluster %q of channel %q in %+v", name, channel, states)
	return ClusterState{}
}

func findEndpoint(t *testing.T, cs ClusterState, addr string) EndpointState {
	t.Helper()
	for _, es := range cs.Endpoints {
		if es.Address == addr {
			return es
		}
	}
	t.Fatalf("cluster %q has no endpoint %s: %+v", cs.Name, addr, cs.Endpoints)
	return EndpointState{}
}

func TestResolverBuilderClusterStatesShowInFlightRequests(t *testing.T) {
	ctx := testutil.Context(t)
	e := newTestEnv(t)
	release := make(chan struct{})
	slow, svc := startScriptedBackend(t, func(ctx context.Context, call int64) error {
		if call == 1 {
			select {
			case <-release:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		return nil
	})
	e.serve("c", slow)
	e.route(w("c", 1))
	if got := e.builder.ClusterStates(); len(got) != 0 {
		t.Fatalf("ClusterStates before any table: %+v, want none", got)
	}

	blocked := make(chan error, 1)
	go func() {
		_, err := e.client.EmptyCall(ctx, &testpb.Empty{})
		blocked <- err
	}()
	waitFor(ctx, t, "the first RPC to reach the backend", func() bool { return svc.calls.Load() == 1 })
	cs := findCluster(t, e.builder.ClusterStates(), testTarget, "c")
	want := EndpointState{Address: slow.addr, Locality: "/z", Weight: 1, Health: "READY", InFlight: 1}
	if cs.InFlight != 1 || len(cs.Endpoints) != 1 || cs.Endpoints[0] != want {
		t.Errorf("while one RPC is in flight: %+v, want in flight 1 and endpoint %+v", cs, want)
	}
	close(release)
	if err := <-blocked; err != nil {
		t.Fatal(err)
	}
	waitFor(ctx, t, "the RPC to leave the counters", func() bool {
		cs := findCluster(t, e.builder.ClusterStates(), testTarget, "c")
		return cs.InFlight == 0 && cs.Endpoints[0].InFlight == 0
	})

	// A closed channel leaves the list.
	if err := e.conn.Close(); err != nil {
		t.Fatal(err)
	}
	if got := e.builder.ClusterStates(); len(got) != 0 {
		t.Errorf("ClusterStates after the channel closed: %+v, want none", got)
	}
}

func TestResolverBuilderClusterStatesShowEjections(t *testing.T) {
	ctx := testutil.Context(t)
	clock := newFakeClock()
	start := clock.Now()
	e := newTestEnv(t, WithClock(clock))
	good, goodSvc := startScriptedBackend(t, func(context.Context, int64) error { return nil })
	bad, badSvc := startScriptedBackend(t, func(context.Context, int64) error { return status.Error(codes.Internal, "broken") })
	c := testCluster("c")
	c.OutlierDetection = failurePercentageDetection()
	e.xds.clusters.set("c", c)
	e.xds.endpoints.set("c-eds", testEndpoints("c-eds", good.addr, bad.addr))
	e.serve("missing-endpoints") // a cluster without endpoints is listed without any
	e.xds.endpoints.remove("missing-endpoints-eds")
	e.route(w("c", 1), w("missing-endpoints", 0))

	waitFor(ctx, t, "both backends to serve", func() bool {
		_, _ = e.client.EmptyCall(ctx, &testpb.Empty{})
		return goodSvc.calls.Load() > 0 && badSvc.calls.Load() > 0
	})
	clock.waitTimers(ctx, t, 1)
	for _, es := range findCluster(t, e.builder.ClusterStates(), testTarget, "c").Endpoints {
		if es.Ejected || es.Health != "READY" {
			t.Errorf("before detection: %+v, want READY and not ejected", es)
		}
	}
	for range 20 {
		_, _ = e.client.EmptyCall(ctx, &testpb.Empty{})
	}
	clock.Advance(time.Second) // the detector ejects bad at start+1s for 10s

	states := e.builder.ClusterStates()
	cs := findCluster(t, states, testTarget, "c")
	if got := findEndpoint(t, cs, bad.addr); !got.Ejected || !got.EjectedUntil.Equal(start.Add(11*time.Second)) {
		t.Errorf("bad endpoint: %+v, want ejected until start+11s", got)
	}
	if got := findEndpoint(t, cs, good.addr); got.Ejected || !got.EjectedUntil.IsZero() {
		t.Errorf("good endpoint: %+v, want not ejected", got)
	}
	if missing := findCluster(t, states, testTarget, "missing-endpoints"); len(missing.Endpoints) != 0 {
		t.Errorf("cluster without endpoints lists %+v", missing.Endpoints)
	}
	if len(states) != 2 || states[0].Name != "c" || states[1].Name != "missing-endpoints" {
		t.Errorf("ClusterStates = %+v, want c and missing-endpoints, in order", states)
	}
}

func TestRoundTripperClusterStates(t *testing.T) {
	ctx := testutil.Context(t)
	e := newHTTPEnv(t)
	release := make(chan struct{})
	web := startHTTPBackend(t, "web", http1Plain, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/block" {
			select {
			case <-release:
			case <-r.Context().Done():
			}
		}
	})
	// An address nobody listens on: dials to it fail.
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := lis.Addr().String()
	_ = lis.Close()

	e.serve("slow", nil, web)
	e.xds.clusters.set("mixed", testCluster("mixed"))
	mixed := testEndpoints("mixed-eds", web.addr, dead)
	mixed.Localities[0].Locality = xdsclient.Locality{Region: "eu", Zone: "eu-1"}
	mixed.Localities[0].Endpoints[1].Weight = 3
	e.xds.endpoints.set("mixed-eds", mixed)
	e.route(&xdsclient.RouteConfig{Name: "rc", VirtualHosts: []xdsclient.VirtualHost{{
		Name: "vh", Domains: []string{"*"},
		Routes: []xdsclient.Route{
			{Match: xdsclient.RouteMatch{Prefix: "/block"}, Action: xdsclient.RouteAction{Cluster: "slow"}},
			{Match: xdsclient.RouteMatch{Prefix: "/"}, Action: xdsclient.RouteAction{Cluster: "mixed"}},
		},
	}}})
	if got := e.rt.ClusterStates(); len(got) != 0 {
		t.Fatalf("ClusterStates before any request: %+v, want none", got)
	}

	blocked := make(chan error, 1)
	go func() {
		_, _, err := e.get(ctx, "/block")
		blocked <- err
	}()
	waitFor(ctx, t, "the blocked request to reach the backend", func() bool { return web.hitsOf("/block") == 1 })
	// Round robin sends one of two requests to each endpoint of "mixed".
	for range 2 {
		_, _, _ = e.get(ctx, "/x")
	}

	states := e.rt.ClusterStates()
	slow := findCluster(t, states, testTarget, "slow")
	wantSlow := EndpointState{Address: web.addr, Locality: "/z", Weight: 1, Health: "READY", InFlight: 1}
	if slow.InFlight != 1 || len(slow.Endpoints) != 1 || slow.Endpoints[0] != wantSlow {
		t.Errorf("slow cluster: %+v, want in flight 1 and endpoint %+v", slow, wantSlow)
	}
	m := findCluster(t, states, testTarget, "mixed")
	if m.InFlight != 0 || len(m.Endpoints) != 2 {
		t.Errorf("mixed cluster: %+v, want 2 endpoints and nothing in flight", m)
	}
	if got, want := findEndpoint(t, m, web.addr), (EndpointState{Address: web.addr, Locality: "eu/eu-1", Weight: 1, Health: "READY"}); got != want {
		t.Errorf("live endpoint: %+v, want %+v", got, want)
	}
	if got, want := findEndpoint(t, m, dead), (EndpointState{Address: dead, Locality: "eu/eu-1", Weight: 3, Health: "TRANSIENT_FAILURE"}); got != want {
		t.Errorf("dead endpoint: %+v, want %+v", got, want)
	}

	close(release)
	if err := <-blocked; err != nil {
		t.Fatal(err)
	}
	if got := findCluster(t, e.rt.ClusterStates(), testTarget, "slow"); got.InFlight != 0 || got.Endpoints[0].InFlight != 0 {
		t.Errorf("after the response body closed: %+v, want nothing in flight", got)
	}
	if err := e.rt.Close(); err != nil {
		t.Fatal(err)
	}
	if got := e.rt.ClusterStates(); len(got) != 0 {
		t.Errorf("ClusterStates after Close: %+v, want none", got)
	}
}
