package balancer

import (
	"math"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	clusterpb "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corepb "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointpb "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listenerpb "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	routepb "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	aggregatepb "github.com/envoyproxy/go-control-plane/envoy/extensions/clusters/aggregate/v3"
	hcmpb "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	matcherpb "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"mesh/internal/testutil"
	"mesh/xdsclient"
	"mesh/xdsclient/xdstest"
)

const conformanceInbound = "xds.istio.io/grpc/lds/inbound/127.0.0.1:9443"

// confResources is the good config the conformance cases break: a client
// listener, route config, cluster and endpoints that RPCs go through, and
// an inbound listener watched beside them.
type confResources struct {
	client  *listenerpb.Listener
	server  *listenerpb.Listener
	rc      *routepb.RouteConfiguration
	cluster *clusterpb.Cluster
	eps     *endpointpb.ClusterLoadAssignment
}

func goodConfResources(addr string) *confResources {
	return &confResources{
		client:  xdstest.ClientListener(testTarget, "rc"),
		server:  xdstest.ServerListener(conformanceInbound, "127.0.0.1", 9443, false),
		rc:      xdstest.RouteConfig("rc", "*", w("c", 1)),
		cluster: xdstest.EDSCluster("c", false),
		eps:     xdstest.Endpoints("c", addr),
	}
}

// set serves r; a nil resource is left out.
func (r *confResources) set(t *testing.T, srv *xdstest.StrictServer) string {
	some := func(rs ...proto.Message) []types.Resource {
		var out []types.Resource
		for _, m := range rs {
			if !reflect.ValueOf(m).IsNil() {
				out = append(out, m)
			}
		}
		return out
	}
	return srv.Set(t, some(r.client, r.server), some(r.rc), some(r.cluster), some(r.eps))
}

// confCase breaks the good config one way. nack is what the NACK's
// error_detail must contain; empty means the change is ACKed, and then
// ignored, if set, must be among the resource's ignored fields in Dump.
type confCase struct {
	name    string
	delta   bool
	typ     string // Dump type of the resource changed
	res     string // its name
	edit    func(*confResources)
	extra   []*discoverypb.Resource // garbled entries of typeURL, served verbatim
	typeURL string
	nack    string
	ignored string
}

func clientHCMEdit(edit func(*hcmpb.HttpConnectionManager)) func(*confResources) {
	return func(r *confResources) {
		hcm := xdstest.HCM("rc")
		edit(hcm)
		r.client.ApiListener.ApiListener = xdstest.MustAny(hcm)
	}
}

func routeEdit(edit func(*routepb.RouteAction)) func(*confResources) {
	return func(r *confResources) { edit(r.rc.VirtualHosts[0].Routes[0].GetRoute()) }
}

func truncated(m proto.Message) *anypb.Any {
	a := xdstest.MustAny(m)
	a.Value = a.Value[:len(a.Value)-3]
	return a
}

func conformanceCases() []confCase {
	foreign := xdstest.MustAny(wrapperspb.String("not a resource"))
	ringHash := func(edit func(*clusterpb.Cluster_RingHashLbConfig)) func(*confResources) {
		return func(r *confResources) {
			r.cluster.LbPolicy = clusterpb.Cluster_RING_HASH
			r.cluster.LbConfig = &clusterpb.Cluster_RingHashLbConfig_{RingHashLbConfig: &clusterpb.Cluster_RingHashLbConfig{}}
			edit(r.cluster.GetRingHashLbConfig())
		}
	}
	cases := []confCase{
		// Entries that cannot be decoded: the whole response is NACKed,
		// naming the entry's index, and nothing is deleted (issue 10).
		{name: "LDS foreign type", typ: "listener", res: testTarget, typeURL: resource.ListenerType,
			extra: []*discoverypb.Resource{{Resource: foreign}}, nack: "resources[2]: type_url"},
		{name: "LDS truncated", typ: "listener", res: testTarget, typeURL: resource.ListenerType,
			extra: []*discoverypb.Resource{{Resource: truncated(xdstest.ClientListener("other:80", "rc"))}}, nack: "resources[2]: listener: cannot unmarshal"},
		{name: "LDS empty name", typ: "listener", res: testTarget, typeURL: resource.ListenerType,
			extra: []*discoverypb.Resource{{Resource: xdstest.MustAny(xdstest.ClientListener("", "rc"))}}, nack: "resources[2]: listener: name: missing"},
		// The garbled entry is the good resource itself: what the
		// response seems to leave out must not be deleted.
		{name: "LDS the listener itself truncated", typ: "listener", res: testTarget, typeURL: resource.ListenerType,
			edit:  func(r *confResources) { r.client = nil },
			extra: []*discoverypb.Resource{{Resource: truncated(xdstest.ClientListener(testTarget, "rc"))}}, nack: "resources[1]: listener: cannot unmarshal"},
		{name: "CDS the cluster itself truncated", typ: "cluster", res: "c", typeURL: resource.ClusterType,
			edit:  func(r *confResources) { r.cluster = nil },
			extra: []*discoverypb.Resource{{Resource: truncated(xdstest.EDSCluster("c", false))}}, nack: "resources[0]: cluster: cannot unmarshal"},
		{name: "delta CDS the cluster itself truncated, removed", delta: true, typ: "cluster", res: "c", typeURL: resource.ClusterType,
			edit:  func(r *confResources) { r.cluster = nil },
			extra: []*discoverypb.Resource{{Name: "c", Resource: truncated(xdstest.EDSCluster("c", false))}}, nack: `cluster "c": resources[0]: cluster: cannot unmarshal`},
		{name: "CDS truncated", typ: "cluster", res: "c", typeURL: resource.ClusterType,
			extra: []*discoverypb.Resource{{Resource: truncated(xdstest.EDSCluster("d", false))}}, nack: "resources[1]: cluster: cannot unmarshal"},
		{name: "CDS foreign type", typ: "cluster", res: "c", typeURL: resource.ClusterType,
			extra: []*discoverypb.Resource{{Resource: foreign}}, nack: "resources[1]: type_url"},
		{name: "delta CDS foreign type", delta: true, typ: "cluster", res: "c", typeURL: resource.ClusterType,
			extra: []*discoverypb.Resource{{Resource: foreign}}, nack: "resources[1]: type_url"},
		{name: "delta CDS truncated", delta: true, typ: "cluster", res: "c", typeURL: resource.ClusterType,
			extra: []*discoverypb.Resource{{Name: "d", Resource: truncated(xdstest.EDSCluster("d", false))}}, nack: `cluster "d": resources[1]: cluster: cannot unmarshal`},
		{name: "delta LDS resource missing", delta: true, typ: "listener", res: testTarget, typeURL: resource.ListenerType,
			extra: []*discoverypb.Resource{{Name: "other:80"}}, nack: "resources[2].resource: missing"},

		// gRFC A41.
		{name: "A41 xff_num_trusted_hops", typ: "listener", res: testTarget,
			edit: clientHCMEdit(func(h *hcmpb.HttpConnectionManager) { h.XffNumTrustedHops = 1 }), nack: "xff_num_trusted_hops: must be 0"},
		{name: "A41 original_ip_detection_extensions", typ: "listener", res: testTarget,
			edit: clientHCMEdit(func(h *hcmpb.HttpConnectionManager) {
				h.OriginalIpDetectionExtensions = []*corepb.TypedExtensionConfig{{Name: "xff", TypedConfig: foreign}}
			}), nack: "original_ip_detection_extensions: must be empty"},
		{name: "unsupported route_specifier named by its field", typ: "listener", res: testTarget,
			edit: clientHCMEdit(func(h *hcmpb.HttpConnectionManager) {
				h.RouteSpecifier = &hcmpb.HttpConnectionManager_ScopedRoutes{ScopedRoutes: &hcmpb.ScopedRoutes{}}
			}), nack: "route_specifier: unsupported scoped_routes"},

		// gRFC A36, on the inbound listener watched beside the client's.
		{name: "A36 listener_filters", typ: "listener", res: conformanceInbound,
			edit: func(r *confResources) {
				r.server.ListenerFilters = []*listenerpb.ListenerFilter{{Name: "tls_inspector"}}
			}, nack: "listener_filters: must be empty"},
		{name: "A36 use_original_dst", typ: "listener", res: conformanceInbound,
			edit: func(r *confResources) { r.server.UseOriginalDst = wrapperspb.Bool(true) }, nack: "use_original_dst: must not be true"},
		{name: "A36 duplicate filter chain match", typ: "listener", res: conformanceInbound,
			edit: func(r *confResources) {
				dup := proto.Clone(r.server.FilterChains[0]).(*listenerpb.FilterChain)
				dup.Name = "again"
				r.server.FilterChains = append(r.server.FilterChains, dup)
			}, nack: "filter_chains[1].filter_chain_match: duplicates the match of filter_chains[0]"},

		// RDS.
		{name: "cluster specifier plugin named", typ: "route_config", res: "rc",
			edit: routeEdit(func(a *routepb.RouteAction) {
				a.ClusterSpecifier = &routepb.RouteAction_ClusterSpecifierPlugin{ClusterSpecifierPlugin: "rls"}
			}), nack: `cluster_specifier_plugin: plugin "rls"`},
		{name: "A42 regex_rewrite invalid", typ: "route_config", res: "rc",
			edit: routeEdit(func(a *routepb.RouteAction) {
				a.HashPolicy = []*routepb.RouteAction_HashPolicy{{PolicySpecifier: &routepb.RouteAction_HashPolicy_Header_{Header: &routepb.RouteAction_HashPolicy_Header{
					HeaderName: "x-user", RegexRewrite: &matcherpb.RegexMatchAndSubstitute{Pattern: &matcherpb.RegexMatcher{Regex: "(["}},
				}}}}
			}), nack: "hash_policy[0].header.regex_rewrite.pattern.regex"},
		{name: "per_try_timeout negative", typ: "route_config", res: "rc",
			edit: routeEdit(func(a *routepb.RouteAction) {
				a.RetryPolicy = &routepb.RetryPolicy{RetryOn: "unavailable", PerTryTimeout: durationpb.New(-time.Second)}
			}), nack: "retry_policy.per_try_timeout: must not be negative"},
		{name: "istiod default retry policy ACKed, unapplied fields listed", typ: "route_config", res: "rc",
			edit: routeEdit(func(a *routepb.RouteAction) {
				a.RetryPolicy = &routepb.RetryPolicy{
					RetryOn:                       "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes",
					NumRetries:                    wrapperspb.UInt32(2),
					PerTryTimeout:                 durationpb.New(time.Minute),
					RetryHostPredicate:            []*routepb.RetryPolicy_RetryHostPredicate{{Name: "envoy.retry_host_predicates.previous_hosts"}},
					HostSelectionRetryMaxAttempts: 5,
				}
			}), ignored: "retry_policy.retry_host_predicate: not implemented"},

		// CDS: gRFC A27, A42, A48, A37.
		{name: "A48 choice_count 1", typ: "cluster", res: "c",
			edit: func(r *confResources) {
				r.cluster.LbPolicy = clusterpb.Cluster_LEAST_REQUEST
				r.cluster.LbConfig = &clusterpb.Cluster_LeastRequestLbConfig_{LeastRequestLbConfig: &clusterpb.Cluster_LeastRequestLbConfig{ChoiceCount: wrapperspb.UInt32(1)}}
			}, nack: "least_request_lb_config.choice_count: 1 is below 2"},
		{name: "A48 choice_count 20 capped and ACKed", typ: "cluster", res: "c",
			edit: func(r *confResources) {
				r.cluster.LbPolicy = clusterpb.Cluster_LEAST_REQUEST
				r.cluster.LbConfig = &clusterpb.Cluster_LeastRequestLbConfig_{LeastRequestLbConfig: &clusterpb.Cluster_LeastRequestLbConfig{ChoiceCount: wrapperspb.UInt32(20)}}
			}},
		{name: "A42 minimum above maximum", typ: "cluster", res: "c",
			edit: ringHash(func(c *clusterpb.Cluster_RingHashLbConfig) {
				c.MinimumRingSize, c.MaximumRingSize = wrapperspb.UInt64(4096), wrapperspb.UInt64(1024)
			}), nack: "minimum_ring_size: 4096 is above maximum_ring_size 1024"},
		{name: "A42 ring above 8M", typ: "cluster", res: "c",
			edit: ringHash(func(c *clusterpb.Cluster_RingHashLbConfig) { c.MaximumRingSize = wrapperspb.UInt64(9 << 20) }),
			nack: "ring_hash_lb_config.maximum_ring_size"},
		{name: "A42 MURMUR_HASH_2", typ: "cluster", res: "c",
			edit: ringHash(func(c *clusterpb.Cluster_RingHashLbConfig) {
				c.HashFunction = clusterpb.Cluster_RingHashLbConfig_MURMUR_HASH_2
			}), nack: "ring_hash_lb_config.hash_function"},
		{name: "A42 ring sizes ACKed", typ: "cluster", res: "c",
			edit: ringHash(func(c *clusterpb.Cluster_RingHashLbConfig) {
				c.MinimumRingSize, c.MaximumRingSize = wrapperspb.UInt64(64), wrapperspb.UInt64(512)
			})},
		{name: "A27 lrs_server not self", typ: "cluster", res: "c",
			edit: func(r *confResources) {
				r.cluster.LrsServer = &corepb.ConfigSource{ConfigSourceSpecifier: &corepb.ConfigSource_Ads{Ads: &corepb.AggregatedConfigSource{}}}
			}, nack: "lrs_server: must be self"},
		{name: "A27 lrs_server self ACKed, listed as not applied", typ: "cluster", res: "c",
			edit: func(r *confResources) {
				r.cluster.LrsServer = &corepb.ConfigSource{ConfigSourceSpecifier: &corepb.ConfigSource_Self{Self: &corepb.SelfConfigSource{}}}
			}, ignored: "lrs_server: load reporting is not implemented"},
		{name: "A27 lb_policy MAGLEV", typ: "cluster", res: "c",
			edit: func(r *confResources) { r.cluster.LbPolicy = clusterpb.Cluster_MAGLEV }, nack: "lb_policy: unsupported MAGLEV"},
		{name: "A37 empty aggregate cluster", typ: "cluster", res: "c",
			edit: func(r *confResources) {
				r.cluster.ClusterDiscoveryType = &clusterpb.Cluster_ClusterType{ClusterType: &clusterpb.Cluster_CustomClusterType{
					Name: "envoy.clusters.aggregate", TypedConfig: xdstest.MustAny(&aggregatepb.ClusterConfig{}),
				}}
			}, nack: "an aggregate cluster must list at least one cluster"},

		// EDS: gRFC A27.
		{name: "A27 locality twice in a priority", typ: "cluster_load_assignment", res: "c",
			edit: func(r *confResources) {
				second := proto.Clone(r.eps.Endpoints[0]).(*endpointpb.LocalityLbEndpoints)
				second.LbEndpoints[0].GetEndpoint().GetAddress().GetSocketAddress().Address = "127.0.0.2"
				r.eps.Endpoints = append(r.eps.Endpoints, second)
			}, nack: "endpoints[1].locality: duplicate locality"},
		{name: "A27 port 0", typ: "cluster_load_assignment", res: "c",
			edit: func(r *confResources) {
				r.eps.Endpoints[0].LbEndpoints[0].GetEndpoint().GetAddress().GetSocketAddress().PortSpecifier = &corepb.SocketAddress_PortValue{}
			}, nack: "port_value"},
	}
	return cases
}

// TestConformance pushes each case through a real xDS server to a real
// client while RPCs run on the last good config: each must be NACKed with
// its message (or ACKed, listing what is not applied), and no RPC may fail.
func TestConformance(t *testing.T) {
	checkNoLeaks(t)
	cases := conformanceCases()
	if len(cases) < 25 {
		t.Fatalf("only %d cases", len(cases))
	}
	b := startBackend(t, "b")
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			runConformanceCase(t, b, tc)
		})
	}
}

func runConformanceCase(t *testing.T, b *backend, tc confCase) {
	ctx := testutil.Context(t)
	srv := xdstest.NewStrictServer(t)
	client, err := xdsclient.New(srv.Bootstrap("node-1", tc.delta), xdsclient.WithResourceTimeout(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = client.Close() }()
	good := goodConfResources(b.addr)
	good.set(t, srv)
	cancelInbound := client.WatchListener(conformanceInbound, func(xdsclient.Event[*xdsclient.Listener]) {})
	defer cancelInbound()
	e := newTestEnvWith(t, client)
	defer func() { _ = e.conn.Close() }()
	if _, err := e.call(ctx); err != nil {
		t.Fatalf("RPC on the good config: %v", err)
	}
	testutil.WaitFor(ctx, t, "the inbound listener", func() bool { return dumpStatus(client, "listener", conformanceInbound) == xdsclient.StatusAcked })

	load := startLoad(ctx, e.call, 2, math.MaxInt64)
	finished := false
	defer func() {
		if !finished {
			close(load.stop)
			load.wg.Wait()
		}
	}()

	bad := goodConfResources(b.addr)
	if tc.edit != nil {
		tc.edit(bad)
	}
	if len(tc.extra) > 0 {
		srv.SetExtra(tc.typeURL, tc.extra...)
	}
	version := bad.set(t, srv) // one push: the resources and the entries together
	if tc.nack != "" {
		testutil.WaitFor(ctx, t, "a NACK", func() bool { return len(srv.Stats().NACKMessages) > 0 })
		if msg := srv.Stats().NACKMessages[0]; !strings.Contains(msg, tc.nack) {
			t.Errorf("NACK %q, want it to contain %q", msg, tc.nack)
		}
		if st := dumpStatus(client, tc.typ, tc.res); len(tc.extra) == 0 && st != xdsclient.StatusNACKed {
			t.Errorf("%s %q status %v, want NACKED", tc.typ, tc.res, st)
		}
	} else {
		testutil.WaitFor(ctx, t, "the ACK of version "+version, func() bool {
			rs, found := dumpEntry(client, tc.typ, tc.res)
			return found && rs.Status == xdsclient.StatusAcked && (tc.delta || rs.Version == version)
		})
		if msgs := srv.Stats().NACKMessages; len(msgs) > 0 {
			t.Errorf("NACKed: %q", msgs)
		}
		if tc.ignored != "" {
			rs, _ := dumpEntry(client, tc.typ, tc.res)
			if !slices.ContainsFunc(rs.Ignored, func(s string) bool { return strings.Contains(s, tc.ignored) }) {
				t.Errorf("ignored fields %q, want one containing %q", rs.Ignored, tc.ignored)
			}
		}
	}
	start := load.sent.Load()
	testutil.WaitFor(ctx, t, "RPCs after the change", func() bool { return load.sent.Load() > start+20 || load.failures.Load() > 0 })
	finished = true
	load.finish(t) // fails the test if any RPC on the last good config failed
	// The garbled entries deleted nothing: the good resources still serve.
	for _, r := range []struct{ typ, name string }{{"listener", testTarget}, {"route_config", "rc"}, {"cluster", "c"}, {"cluster_load_assignment", "c"}, {"listener", conformanceInbound}} {
		if st := dumpStatus(client, r.typ, r.name); st == xdsclient.StatusDoesNotExist || st == xdsclient.StatusRequested {
			t.Errorf("%s %q is %v after the change", r.typ, r.name, st)
		}
	}
}

func dumpEntry(c *xdsclient.Client, typ, name string) (xdsclient.ResourceStatus, bool) {
	for _, rs := range c.Dump() {
		if rs.Type == typ && rs.Name == name {
			return rs, true
		}
	}
	return xdsclient.ResourceStatus{}, false
}

func dumpStatus(c *xdsclient.Client, typ, name string) xdsclient.ResourceStatusKind {
	rs, found := dumpEntry(c, typ, name)
	if !found {
		return "ABSENT"
	}
	return rs.Status
}
