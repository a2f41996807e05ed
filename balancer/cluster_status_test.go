package balancer

import (
	"context"
	"net"
	"sync/atomic"
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

// TestClusterStatesShowInFlightRequests: ClusterStates lists nothing
// before the first table, counts a call in flight on its cluster and
// endpoint until it ends, and nothing once the channel or RoundTripper is
// closed.
func TestClusterStatesShowInFlightRequests(t *testing.T) {
	forEachFrontEnd(t, func(t *testing.T, fe testFrontEnd) {
		ctx := testutil.Context(t)
		release := make(chan struct{})
		var calls atomic.Int64
		addr := fe.backend(t, "slow", func(ctx context.Context) error {
			if calls.Add(1) == 1 {
				select {
				case <-release:
				case <-ctx.Done():
					return ctx.Err()
				}
			}
			return nil
		})
		fe.serve(testCluster("c"), addr)
		fe.routeAction(xdsclient.RouteAction{Cluster: "c"})
		if got := fe.clusterStates(); len(got) != 0 {
			t.Fatalf("ClusterStates before any call: %+v, want none", got)
		}

		blocked := make(chan error, 1)
		go func() {
			_, err := fe.call(ctx)
			blocked <- err
		}()
		testutil.WaitFor(ctx, t, "the first call to reach the backend", func() bool { return calls.Load() == 1 })
		cs := findCluster(t, fe.clusterStates(), testTarget, "c")
		want := EndpointState{Address: addr, Locality: "/z", Weight: 1, Health: "READY", InFlight: 1}
		if cs.InFlight != 1 || len(cs.Endpoints) != 1 || cs.Endpoints[0] != want {
			t.Errorf("while one call is in flight: %+v, want in flight 1 and endpoint %+v", cs, want)
		}
		close(release)
		if err := <-blocked; err != nil {
			t.Fatal(err)
		}
		if _, ok := fe.(*httpFrontEnd); ok {
			// The RoundTripper counts a request until its body is closed,
			// which call has done.
			if got := findCluster(t, fe.clusterStates(), testTarget, "c"); got.InFlight != 0 || got.Endpoints[0].InFlight != 0 {
				t.Errorf("after the response body closed: %+v, want nothing in flight", got)
			}
		}
		testutil.WaitFor(ctx, t, "the call to leave the counters", func() bool {
			cs := findCluster(t, fe.clusterStates(), testTarget, "c")
			return cs.InFlight == 0 && cs.Endpoints[0].InFlight == 0
		})

		if err := fe.close(); err != nil {
			t.Fatal(err)
		}
		if got := fe.clusterStates(); len(got) != 0 {
			t.Errorf("ClusterStates after Close: %+v, want none", got)
		}
	})
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

	testutil.WaitFor(ctx, t, "both backends to serve", func() bool {
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

// TestRoundTripperClusterStatesShowEndpointHealth: what only the
// RoundTripper shows (TestClusterStatesShowInFlightRequests has the rest):
// an endpoint it cannot dial is TRANSIENT_FAILURE, listed with its
// locality and weight beside the live one, and a cluster whose calls
// ended has nothing in flight.
func TestRoundTripperClusterStatesShowEndpointHealth(t *testing.T) {
	ctx := testutil.Context(t)
	e := newHTTPEnv(t)
	web := startHTTPBackend(t, "web", http1Plain, nil)
	// An address nobody listens on: dials to it fail.
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	dead := lis.Addr().String()
	_ = lis.Close()

	e.xds.clusters.set("mixed", testCluster("mixed"))
	mixed := testEndpoints("mixed-eds", web.addr, dead)
	mixed.Localities[0].Locality = xdsclient.Locality{Region: "eu", Zone: "eu-1"}
	mixed.Localities[0].Endpoints[1].Weight = 3
	e.xds.endpoints.set("mixed-eds", mixed)
	e.route(actionRouteConfig("rc", xdsclient.RouteAction{Cluster: "mixed"}))
	// Round robin sends one of two requests to each endpoint of "mixed".
	for range 2 {
		_, _, _ = e.get(ctx, "/x")
	}

	m := findCluster(t, e.rt.ClusterStates(), testTarget, "mixed")
	if m.InFlight != 0 || len(m.Endpoints) != 2 {
		t.Errorf("mixed cluster: %+v, want 2 endpoints and nothing in flight", m)
	}
	if got, want := findEndpoint(t, m, web.addr), (EndpointState{Address: web.addr, Locality: "eu/eu-1", Weight: 1, Health: "READY"}); got != want {
		t.Errorf("live endpoint: %+v, want %+v", got, want)
	}
	if got, want := findEndpoint(t, m, dead), (EndpointState{Address: dead, Locality: "eu/eu-1", Weight: 3, Health: "TRANSIENT_FAILURE"}); got != want {
		t.Errorf("dead endpoint: %+v, want %+v", got, want)
	}
}
