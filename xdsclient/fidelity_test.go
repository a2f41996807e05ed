package xdsclient_test

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	clusterpb "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corepb "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointpb "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerpb "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routepb "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	tlspb "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"mesh/internal/testutil"
	"mesh/xdsclient"
	"mesh/xdsclient/xdstest"
)

func newStrictClient(t *testing.T, srv *xdstest.StrictServer, delta bool, opts ...xdsclient.Option) *xdsclient.Client {
	t.Helper()
	opts = append([]xdsclient.Option{xdsclient.WithBackoff(fastBackoff)}, opts...)
	c, err := xdsclient.New(srv.Bootstrap(nodeID, delta), opts...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func protocols() []struct {
	name  string
	delta bool
} {
	return []struct {
		name  string
		delta bool
	}{{"sotw", false}, {"delta", true}}
}

// waitNACK waits for the n-th NACK the server receives and returns its message.
func waitNACK(t *testing.T, srv *xdstest.StrictServer, n int) string {
	t.Helper()
	ctx := testutil.Context(t)
	for {
		if st := srv.Stats(); len(st.NACKMessages) >= n {
			return st.NACKMessages[n-1]
		}
		select {
		case <-ctx.Done():
			t.Fatalf("no NACK #%d; server stats %+v; cds %v", n, srv.Stats(), srv.Subscribed("type.googleapis.com/envoy.config.cluster.v3.Cluster"))
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// TestUndecodableEntryRejectsWholeResponse: a CDS response with an entry
// that cannot be read as a named cluster is NACKed whole, naming the
// entry's index, and neither deletes nor updates anything.
func TestUndecodableEntryRejectsWholeResponse(t *testing.T) {
	truncated := xdstest.MustAny(xdstest.EDSCluster("x", false))
	truncated.Value = truncated.Value[:len(truncated.Value)-3]
	cases := []struct {
		name  string
		entry *anypb.Any
		want  string
	}{
		{"foreign type", xdstest.MustAny(wrapperspb.String("not a cluster")), "type_url"},
		{"truncated bytes", truncated, "cannot unmarshal"},
		{"empty name", xdstest.MustAny(&clusterpb.Cluster{ClusterDiscoveryType: &clusterpb.Cluster_Type{Type: clusterpb.Cluster_EDS}}), "name: missing"},
	}
	for _, p := range protocols() {
		for _, tc := range cases {
			t.Run(p.name+"/"+tc.name, func(t *testing.T) {
				ctx := testutil.Context(t)
				srv := xdstest.NewStrictServer(t)
				srv.Set(t, nil, nil, []types.Resource{xdstest.EDSCluster(clusterV1, false)}, nil)
				c := newStrictClient(t, srv, p.delta)
				cds := newEvents[*xdsclient.Cluster]()
				c.WatchCluster(clusterV1, cds.fn)
				next(ctx, t, cds, isValue)

				// The update to v1 rides in the rejected response: it must
				// not be applied either.
				changed := xdstest.EDSCluster(clusterV1, false)
				changed.EdsClusterConfig.ServiceName = "changed"
				srv.SetExtra(resource.ClusterType, &discoverypb.Resource{Name: "", Resource: tc.entry})
				srv.Push()
				waitNACK(t, srv, 1)
				srv.Set(t, nil, nil, []types.Resource{changed}, nil)
				msg := waitNACK(t, srv, 2)
				if !strings.Contains(msg, "resources[1]") || !strings.Contains(msg, tc.want) || !strings.Contains(msg, "rejected whole") {
					t.Fatalf("NACK %q, want the entry's index resources[1], %q and that the response was rejected whole", msg, tc.want)
				}
				// No NotFound, no new value: only (at most) the rejection.
				for {
					ev, ok := cds.pop()
					if !ok {
						break
					}
					if ev.NotFound || ev.Resource != nil {
						t.Fatalf("event after a rejected response: %+v", ev)
					}
				}
				rs := statusOf(t, c, "cluster", clusterV1)
				if rs.Status == xdsclient.StatusDoesNotExist || rs.Status == xdsclient.StatusRequested {
					t.Fatalf("cluster after a rejected response: %+v", rs)
				}
				again := newEvents[*xdsclient.Cluster]()
				c.WatchCluster(clusterV1, again.fn)
				if ev := next(ctx, t, again, nil); !isValue(ev) || ev.Resource.EDSServiceName != clusterV1 {
					t.Fatalf("last good cluster = %+v", ev)
				}

				// Once the entry is gone the update applies.
				srv.SetExtra(resource.ClusterType)
				srv.Push()
				if ev := next(ctx, t, cds, isValue); ev.Resource.EDSServiceName != "changed" {
					t.Fatalf("cluster after the good response = %+v", ev.Resource)
				}
			})
		}
	}
}

// TestNACKedBeforeGoodReachesEveryWatcher: a cluster whose only version
// was rejected gives its error to the first watcher and to every later
// one at once, and is not reported missing by the does-not-exist timer.
func TestNACKedBeforeGoodReachesEveryWatcher(t *testing.T) {
	for _, p := range protocols() {
		t.Run(p.name, func(t *testing.T) {
			ctx := testutil.Context(t)
			srv := xdstest.NewStrictServer(t)
			bad := xdstest.EDSCluster(clusterV1, false)
			bad.LbPolicy = clusterpb.Cluster_MAGLEV
			srv.Set(t, nil, nil, []types.Resource{bad}, nil)
			c := newStrictClient(t, srv, p.delta, xdsclient.WithResourceTimeout(50*time.Millisecond))
			rejected := func(ev xdsclient.Event[*xdsclient.Cluster]) bool {
				return errors.Is(ev.Err, xdsclient.ErrResourceRejected) && strings.Contains(ev.Err.Error(), "lb_policy")
			}
			early := newEvents[*xdsclient.Cluster]()
			c.WatchCluster(clusterV1, early.fn)
			if ev := next(ctx, t, early, nil); !rejected(ev) {
				t.Fatalf("early watcher: %+v", ev)
			}
			// Past the does-not-exist timeout (counted in NACKs pushed, not
			// time): still rejected, not missing. Each push waits for the
			// NACK before it, which a client may otherwise fold into one.
			waitNACK(t, srv, 1)
			for i := 2; i <= 4; i++ {
				srv.Push()
				waitNACK(t, srv, i)
			}
			for range 3 {
				late := newEvents[*xdsclient.Cluster]()
				c.WatchCluster(clusterV1, late.fn)
				if ev := next(ctx, t, late, nil); !rejected(ev) {
					t.Fatalf("late watcher: %+v", ev)
				}
			}
			if ev, ok := early.pop(); ok && !rejected(ev) {
				t.Fatalf("early watcher later got %+v", ev)
			}
			if rs := statusOf(t, c, "cluster", clusterV1); rs.Status != xdsclient.StatusNACKed {
				t.Fatalf("status = %+v", rs)
			}
		})
	}
}

// TestNeverReceivedIsLeftToTheTimer: a state-of-the-world CDS response
// without a newly watched cluster does not make it missing (the response
// may answer an earlier request); its does-not-exist timer does. One that
// was received and then left out is deleted at once.
func TestNeverReceivedIsLeftToTheTimer(t *testing.T) {
	ctx := testutil.Context(t)
	srv := xdstest.NewStrictServer(t)
	srv.Set(t, nil, nil, []types.Resource{xdstest.EDSCluster(clusterV1, false)}, nil)
	c := newStrictClient(t, srv, false, xdsclient.WithResourceTimeout(time.Hour))
	v1, later := newEvents[*xdsclient.Cluster](), newEvents[*xdsclient.Cluster]()
	c.WatchCluster(clusterV1, v1.fn)
	next(ctx, t, v1, isValue)
	c.WatchCluster("later", later.fn)
	for range 3 {
		srv.Push()
	}
	// The cluster arrives: the first event its watcher sees is its value.
	srv.Set(t, nil, nil, []types.Resource{xdstest.EDSCluster(clusterV1, false), xdstest.EDSCluster("later", false)}, nil)
	if ev := next(ctx, t, later, nil); !isValue(ev) {
		t.Fatalf("first event of a cluster that came later: %+v", ev)
	}
	// Left out after it was received: deleted.
	srv.Set(t, nil, nil, []types.Resource{xdstest.EDSCluster(clusterV1, false)}, nil)
	next(ctx, t, later, isNotFound)

	// With a timer, a cluster never sent is reported missing by it, naming why.
	c2 := newStrictClient(t, srv, false, xdsclient.WithResourceTimeout(20*time.Millisecond))
	never := newEvents[*xdsclient.Cluster]()
	c2.WatchCluster("never", never.fn)
	next(ctx, t, never, isNotFound)
	if rs := statusOf(t, c2, "cluster", "never"); !strings.Contains(fmt.Sprint(rs.Error), "resource timeout") {
		t.Fatalf("status = %+v", rs)
	}
}

// TestUnappliedFieldsAreListed: every field a resource sets that mesh
// does not apply is listed in Dump, and none that it applies.
func TestUnappliedFieldsAreListed(t *testing.T) {
	ctx := testutil.Context(t)
	srv := xdstest.NewStrictServer(t)
	good := func() ([]types.Resource, []types.Resource, []types.Resource, []types.Resource) {
		return []types.Resource{xdstest.ClientListener(listenerName, routeName), xdstest.ServerListener("inbound", "127.0.0.1", 9443, false)},
			[]types.Resource{xdstest.RouteConfig(routeName, "svc", xdsclient.ClusterWeight{Name: clusterV1, Weight: 1})},
			[]types.Resource{xdstest.EDSCluster(clusterV1, true)},
			[]types.Resource{xdstest.Endpoints(clusterV1, "127.0.0.1:8080")}
	}
	l, r, cl, e := good()
	srv.Set(t, l, r, cl, e)
	bs := srv.Bootstrap(nodeID, false)
	bs.CertificateProviders = map[string]xdsclient.CertificateProvider{xdstest.CertProvider: {
		PluginName:  xdsclient.PluginFileWatcher,
		FileWatcher: &xdsclient.FileWatcherConfig{CACertificateFile: "/unused/root.pem", RefreshInterval: time.Minute},
	}}
	c, err := xdsclient.New(bs, xdsclient.WithBackoff(fastBackoff))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	type watched struct{ typ, name string }
	all := []watched{{"listener", listenerName}, {"listener", "inbound"}, {"route_config", routeName}, {"cluster", clusterV1}, {"cluster_load_assignment", clusterV1}}
	for _, w := range all {
		evs, _ := watchAny(c, w.typ, w.name)
		if ev := next(ctx, t, evs, nil); !ev.Resource.value {
			t.Fatalf("%s %s: %+v", w.typ, w.name, ev.Resource)
		}
	}
	// mesh's own test resources use only what mesh applies.
	for _, w := range all {
		if rs := statusOf(t, c, w.typ, w.name); len(rs.Ignored) != 0 {
			t.Errorf("%s %s: applied fields listed as ignored: %q", w.typ, w.name, rs.Ignored)
		}
	}

	// Fields istiod sets that mesh does not apply.
	l, r, cl, e = good()
	cluster := cl[0].(*clusterpb.Cluster)
	cluster.ConnectTimeout = durationpb.New(10 * time.Second)
	cluster.Metadata = &corepb.Metadata{FilterMetadata: map[string]*structpb.Struct{"istio": {}}}
	utc := &tlspb.UpstreamTlsContext{}
	if err := cluster.TransportSocket.GetTypedConfig().UnmarshalTo(utc); err != nil {
		t.Fatal(err)
	}
	utc.CommonTlsContext.AlpnProtocols = []string{"h2"}
	cluster.TransportSocket.ConfigType = &corepb.TransportSocket_TypedConfig{TypedConfig: xdstest.MustAny(utc)}
	route := r[0].(*routepb.RouteConfiguration)
	route.VirtualHosts[0].Routes[0].GetRoute().Timeout = durationpb.New(0)
	route.ValidateClusters = wrapperspb.Bool(false)
	eps := e[0].(*endpointpb.ClusterLoadAssignment)
	eps.Endpoints[0].LbEndpoints[0].Metadata = &corepb.Metadata{}
	eps.Policy = &endpointpb.ClusterLoadAssignment_Policy{OverprovisioningFactor: wrapperspb.UInt32(140)}
	hcm := xdstest.HCM(routeName)
	hcm.UseRemoteAddress = wrapperspb.Bool(true)
	l[0].(*listenerpb.Listener).ApiListener.ApiListener = xdstest.MustAny(hcm)
	version := srv.Set(t, l, r, cl, e)
	want := map[watched][]string{
		{"cluster", clusterV1}:                 {"connect_timeout: not applied", "metadata: not applied", "transport_socket.typed_config.common_tls_context.alpn_protocols: not applied"},
		{"route_config", routeName}:            {"virtual_hosts.routes.route.timeout: not applied", "validate_clusters: not applied"},
		{"cluster_load_assignment", clusterV1}: {"endpoints.lb_endpoints.metadata: not applied", "policy.overprovisioning_factor: not applied"},
		{"listener", listenerName}:             {"api_listener.api_listener.use_remote_address: not applied"},
	}
	for w, fields := range want {
		testutil.WaitFor(ctx, t, w.typ+" "+w.name+" version "+version, func() bool { return statusOf(t, c, w.typ, w.name).Version == version })
		rs := statusOf(t, c, w.typ, w.name)
		slices.Sort(fields)
		got := slices.Sorted(slices.Values(rs.Ignored))
		if !slices.Equal(got, fields) {
			t.Errorf("%s %s: ignored %q, want %q", w.typ, w.name, got, fields)
		}
	}
}
