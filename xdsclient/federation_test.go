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

const (
	authorityA = "a.example"
	authorityB = "b.example"
	// authorityA2 lists the same servers as authorityA: it must share A's stream.
	authorityA2 = "a2.example"
	// authorityTop lists no servers: it uses the top-level ones.
	authorityTop = "top.example"
)

func xdstpListener(authority, id string) string {
	return "xdstp://" + authority + "/envoy.config.listener.v3.Listener/" + id
}

// federatedBootstrap points the top-level servers at top, authority A (and
// A2) at srvA and authority B at srvB.
func federatedBootstrap(top, srvA, srvB *xdstest.Server) *xdsclient.Bootstrap {
	bs := top.Bootstrap(nodeID)
	bs.Authorities = map[string]xdsclient.Authority{
		authorityA:   {Servers: srvA.Bootstrap(nodeID).Servers},
		authorityA2:  {Servers: srvA.Bootstrap(nodeID).Servers},
		authorityB:   {Servers: srvB.Bootstrap(nodeID).Servers},
		authorityTop: {},
	}
	return bs
}

func newFederatedClient(t *testing.T, bs *xdsclient.Bootstrap) *xdsclient.Client {
	t.Helper()
	c, err := xdsclient.New(bs, xdsclient.WithBackoff(fastBackoff))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func setListeners(t *testing.T, srv *xdstest.Server, nameToRoute map[string]string) {
	t.Helper()
	var ls []types.Resource
	for name, route := range nameToRoute {
		ls = append(ls, xdstest.ClientListener(name, route))
	}
	srv.SetResources(t, nodeID, ls, nil, nil, nil)
}

// ldsNames returns every listener name srv was ever asked for.
func ldsNames(srv *xdstest.Server) []string {
	var names []string
	for _, r := range srv.Requests() {
		if r.GetTypeUrl() == typeLDS {
			names = append(names, r.GetResourceNames()...)
		}
	}
	slices.Sort(names)
	return slices.Compact(names)
}

func TestFederationRoutesEachAuthorityToItsServers(t *testing.T) {
	ctx := testutil.Context(t)
	top, srvA, srvB := xdstest.NewServer(t), xdstest.NewServer(t), xdstest.NewServer(t)
	nameA, nameA2 := xdstpListener(authorityA, "payments"), xdstpListener(authorityA2, "payments")
	nameB, nameTop := xdstpListener(authorityB, "payments"), xdstpListener(authorityTop, "payments")
	// Each server holds only its own authorities' resources; the route
	// name tells which server a listener came from.
	setListeners(t, srvA, map[string]string{nameA: "from-a", nameA2: "from-a2"})
	setListeners(t, srvB, map[string]string{nameB: "from-b"})
	setListeners(t, top, map[string]string{listenerName: "from-top", nameTop: "from-top-authority"})
	c := newFederatedClient(t, federatedBootstrap(top, srvA, srvB))

	want := map[string]string{nameA: "from-a", nameA2: "from-a2", nameB: "from-b", listenerName: "from-top", nameTop: "from-top-authority"}
	watches := map[string]*events[*xdsclient.Listener]{}
	for name := range want {
		watches[name] = newEvents[*xdsclient.Listener]()
		c.WatchListener(name, watches[name].fn)
	}
	for name, route := range want {
		ev := next(ctx, t, watches[name], nil)
		if !isValue(ev) || ev.Resource.Name != name || ev.Resource.HTTP.RouteConfigName != route {
			t.Fatalf("listener %q: event = %+v, want route %q", name, ev, route)
		}
	}

	// Authorities A and A2 name the same server config: one stream, so one
	// request lists both names.
	if _, err := srvA.WaitForRequest(ctx, func(r *discoverypb.DiscoveryRequest) bool {
		return r.GetTypeUrl() == typeLDS && slices.Contains(r.GetResourceNames(), nameA) && slices.Contains(r.GetResourceNames(), nameA2)
	}); err != nil {
		t.Fatalf("server A never got one request for both authorities that share it: %v", err)
	}
	// And each server was asked only for its own authorities' names.
	for srv, wantNames := range map[*xdstest.Server][]string{
		srvA: {nameA2, nameA},
		srvB: {nameB},
		top:  {listenerName, nameTop},
	} {
		slices.Sort(wantNames)
		if got := ldsNames(srv); !slices.Equal(got, wantNames) {
			t.Errorf("server %s was asked for %q, want %q", srv.Addr(), got, wantNames)
		}
	}
	if !c.Connected() {
		t.Error("Connected() = false with every stream answering")
	}
	for _, rs := range c.Dump() {
		wantSource := map[string]string{nameA: srvA.Addr(), nameA2: srvA.Addr(), nameB: srvB.Addr(), listenerName: top.Addr(), nameTop: top.Addr()}[rs.Name]
		if rs.Source != wantSource {
			t.Errorf("Dump: %q came from %q, want %q", rs.Name, rs.Source, wantSource)
		}
	}
}

func TestFederationStreamFailureStaysOnItsAuthority(t *testing.T) {
	ctx := testutil.Context(t)
	top, srvA, srvB := xdstest.NewServer(t), xdstest.NewServer(t), xdstest.NewServer(t)
	nameA, nameB := xdstpListener(authorityA, "svc"), xdstpListener(authorityB, "svc")
	setListeners(t, srvA, map[string]string{nameA: "ra"})
	setListeners(t, srvB, map[string]string{nameB: "rb"})
	c := newFederatedClient(t, federatedBootstrap(top, srvA, srvB))
	evA, evB := newEvents[*xdsclient.Listener](), newEvents[*xdsclient.Listener]()
	c.WatchListener(nameA, evA.fn)
	c.WatchListener(nameB, evB.fn)
	next(ctx, t, evA, isValue)
	next(ctx, t, evB, isValue)

	srvB.Stop()
	if ev := next(ctx, t, evB, nil); !errors.Is(ev.Err, xdsclient.ErrStreamFailed) || !strings.Contains(ev.Err.Error(), srvB.Addr()) {
		t.Fatalf("watch of B after B stopped: %+v, want ErrStreamFailed naming %s", ev, srvB.Addr())
	}
	if c.Connected() {
		t.Error("Connected() = true with B's stream down")
	}
	// A's watch heard nothing: its stream is another one.
	if ev, ok := evA.pop(); ok {
		t.Fatalf("watch of A got %+v when B's server stopped", ev)
	}
	setListeners(t, srvA, map[string]string{nameA: "ra2"})
	if ev := next(ctx, t, evA, nil); !isValue(ev) || ev.Resource.HTTP.RouteConfigName != "ra2" {
		t.Fatalf("watch of A while B is down: %+v", ev)
	}
}

func TestFederationCanonicalizesContextParams(t *testing.T) {
	ctx := testutil.Context(t)
	top, srvA, srvB := xdstest.NewServer(t), xdstest.NewServer(t), xdstest.NewServer(t)
	canonical := xdstpListener(authorityA, "grpc/client/payments?project=1&zone=z1")
	setListeners(t, srvA, map[string]string{canonical: "r"})
	c := newFederatedClient(t, federatedBootstrap(top, srvA, srvB))

	reordered, sorted := newEvents[*xdsclient.Listener](), newEvents[*xdsclient.Listener]()
	c.WatchListener(xdstpListener(authorityA, "grpc/client/payments?zone=z1&project=1"), reordered.fn)
	c.WatchListener(canonical, sorted.fn)
	for _, e := range []*events[*xdsclient.Listener]{reordered, sorted} {
		if ev := next(ctx, t, e, nil); !isValue(ev) || ev.Resource.Name != canonical {
			t.Fatalf("event = %+v, want listener %q", ev, canonical)
		}
	}
	if got := ldsNames(srvA); !slices.Equal(got, []string{canonical}) {
		t.Errorf("server asked for %q, want only the canonical %q", got, canonical)
	}
	if d := c.Dump(); len(d) != 1 || d[0].Name != canonical {
		t.Errorf("Dump = %+v, want one entry %q", d, canonical)
	}
}

func TestFederationUnknownAuthorityFailsTheWatchOnly(t *testing.T) {
	ctx := testutil.Context(t)
	top, srvA, srvB := xdstest.NewServer(t), xdstest.NewServer(t), xdstest.NewServer(t)
	c := newFederatedClient(t, federatedBootstrap(top, srvA, srvB))

	unknown := newEvents[*xdsclient.Listener]()
	c.WatchListener(xdstpListener("nowhere.example", "svc"), unknown.fn)
	ev := next(ctx, t, unknown, nil)
	if !errors.Is(ev.Err, xdsclient.ErrUnknownAuthority) || !strings.Contains(ev.Err.Error(), `"nowhere.example"`) {
		t.Fatalf("event = %+v, want ErrUnknownAuthority naming the authority", ev)
	}

	wrongType := newEvents[*xdsclient.Cluster]()
	c.WatchCluster(xdstpListener(authorityA, "svc"), wrongType.fn)
	if ev := next(ctx, t, wrongType, nil); !errors.Is(ev.Err, xdsclient.ErrInvalidResourceName) ||
		!strings.Contains(ev.Err.Error(), "envoy.config.cluster.v3.Cluster") {
		t.Fatalf("cluster watch on a listener name: %+v, want ErrInvalidResourceName naming the expected type", ev)
	}

	// Neither watch opened a stream or left an entry behind.
	if d := c.Dump(); len(d) != 0 {
		t.Errorf("Dump = %+v, want nothing", d)
	}
	for _, srv := range []*xdstest.Server{top, srvA, srvB} {
		if n := len(srv.Requests()); n != 0 {
			t.Errorf("server %s got %d requests", srv.Addr(), n)
		}
	}
	if c.Connected() {
		t.Error("Connected() = true with no stream")
	}
}

func TestFederationDeletionOnOneServerLeavesOthers(t *testing.T) {
	ctx := testutil.Context(t)
	top, srvA, srvB := xdstest.NewServer(t), xdstest.NewServer(t), xdstest.NewServer(t)
	nameA, nameB := xdstpListener(authorityA, "svc"), xdstpListener(authorityB, "svc")
	setListeners(t, srvA, map[string]string{nameA: "ra"})
	setListeners(t, srvB, map[string]string{nameB: "rb"})
	c := newFederatedClient(t, federatedBootstrap(top, srvA, srvB))
	evA, evB := newEvents[*xdsclient.Listener](), newEvents[*xdsclient.Listener]()
	c.WatchListener(nameA, evA.fn)
	c.WatchListener(nameB, evB.fn)
	next(ctx, t, evA, isValue)
	next(ctx, t, evB, isValue)

	// An LDS response of B without nameA must not delete A's listener:
	// absence means deletion only on the resource's own stream.
	setListeners(t, srvB, map[string]string{})
	if ev := next(ctx, t, evB, nil); !ev.NotFound {
		t.Fatalf("B's listener after its server dropped it: %+v", ev)
	}
	setListeners(t, srvA, map[string]string{nameA: "ra2"})
	if ev := next(ctx, t, evA, nil); !isValue(ev) || ev.Resource.HTTP.RouteConfigName != "ra2" {
		t.Fatalf("A's listener: %+v, want the update and no NotFound", ev)
	}
}

func TestClientListenerName(t *testing.T) {
	bs, err := xdsclient.ParseBootstrap([]byte(`{
  "xds_servers": [{"server_uri": "127.0.0.1:1", "channel_creds": [{"type": "insecure"}]}],
  "client_default_listener_resource_name_template": "xdstp://a.example/envoy.config.listener.v3.Listener/grpc/client/%s?project=1",
  "authorities": {
    "a.example": {},
    "b.example": {"client_listener_resource_name_template": "xdstp://b.example/envoy.config.listener.v3.Listener/b/%s"}
  }
}`))
	if err != nil {
		t.Fatal(err)
	}
	plain := &xdsclient.Bootstrap{}
	for _, tc := range []struct {
		bs     *xdsclient.Bootstrap
		target string
		want   string
	}{
		{plain, "payments:8080", "payments:8080"},
		{plain, "xds:///payments:8080", "payments:8080"},
		{bs, "payments:8080", "xdstp://a.example/envoy.config.listener.v3.Listener/grpc/client/payments:8080?project=1"},
		{bs, "xds:///pay ments:8080", "xdstp://a.example/envoy.config.listener.v3.Listener/grpc/client/pay%20ments:8080?project=1"},
		{bs, "xds://b.example/payments:8080", "xdstp://b.example/envoy.config.listener.v3.Listener/b/payments:8080"},
		{bs, "xdstp://b.example/payments:8080", "xdstp://b.example/envoy.config.listener.v3.Listener/b/payments:8080"},
		{bs, "xds://a.example/payments:8080", "xdstp://a.example/envoy.config.listener.v3.Listener/payments:8080"},
		{bs, "xdstp://c.example/envoy.config.listener.v3.Listener/x?z=1&a=2", "xdstp://c.example/envoy.config.listener.v3.Listener/x?a=2&z=1"},
		{bs, "xds://unknown.example/svc", "xdstp://unknown.example/envoy.config.listener.v3.Listener/svc"},
	} {
		if got := tc.bs.ClientListenerName(tc.target); got != tc.want {
			t.Errorf("ClientListenerName(%q) = %q, want %q", tc.target, got, tc.want)
		}
	}
}

func TestServerListenerName(t *testing.T) {
	bs := &xdsclient.Bootstrap{ServerListenerResourceNameTemplate: "xds.istio.io/grpc/lds/inbound/%s"}
	if got := bs.ServerListenerName("[::]:8080"); got != "xds.istio.io/grpc/lds/inbound/[::]:8080" {
		t.Errorf("old-style: %q", got)
	}
	bs.ServerListenerResourceNameTemplate = "xdstp://a.example/envoy.config.listener.v3.Listener/grpc/server/%s"
	if got := bs.ServerListenerName("[::]:8080"); got != "xdstp://a.example/envoy.config.listener.v3.Listener/grpc/server/%5B::%5D:8080" {
		t.Errorf("xdstp: %q", got)
	}
	if got := (&xdsclient.Bootstrap{}).ServerListenerName("0.0.0.0:1"); got != "" {
		t.Errorf("no template: %q", got)
	}
}

func TestBootstrapFederationErrors(t *testing.T) {
	const servers = `"xds_servers":[{"server_uri":"a:1","channel_creds":[{"type":"insecure"}]}]`
	for _, tc := range []struct {
		name, json, want string
	}{
		{"authority template prefix",
			`{` + servers + `,"authorities":{"a.example":{"client_listener_resource_name_template":"xdstp://b.example/envoy.config.listener.v3.Listener/%s"}}}`,
			`bootstrap: authorities.a.example.client_listener_resource_name_template: must start with "xdstp://a.example/"`},
		{"authority template not xdstp",
			`{` + servers + `,"authorities":{"a.example":{"client_listener_resource_name_template":"%s"}}}`,
			`bootstrap: authorities.a.example.client_listener_resource_name_template: must start with "xdstp://a.example/"`},
		{"authority servers",
			`{` + servers + `,"authorities":{"a.example":{"xds_servers":[{"server_uri":"b:1","channel_creds":[{"type":"magic"}]}]}}}`,
			`bootstrap: authorities.a.example.xds_servers[0].channel_creds: server "b:1" has no supported type`},
		{"default template unknown authority",
			`{` + servers + `,"client_default_listener_resource_name_template":"xdstp://x.example/envoy.config.listener.v3.Listener/%s"}`,
			`bootstrap: client_default_listener_resource_name_template: authority "x.example" is not in authorities`},
		{"server template unknown authority",
			`{` + servers + `,"server_listener_resource_name_template":"xdstp://x.example/envoy.config.listener.v3.Listener/%s"}`,
			`bootstrap: server_listener_resource_name_template: authority "x.example" is not in authorities`},
		{"server template wrong type",
			`{` + servers + `,"authorities":{"x.example":{}},"server_listener_resource_name_template":"xdstp://x.example/envoy.config.cluster.v3.Cluster/%s"}`,
			`bootstrap: server_listener_resource_name_template: type "envoy.config.cluster.v3.Cluster" must be "envoy.config.listener.v3.Listener"`},
		{"default template without %s",
			`{` + servers + `,"authorities":{"x.example":{}},"client_default_listener_resource_name_template":"xdstp://x.example/envoy.config.listener.v3.Listener/fixed"}`,
			`bootstrap: client_default_listener_resource_name_template: an xdstp template must contain %s`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := xdsclient.ParseBootstrap([]byte(tc.json))
			if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
				t.Fatalf("err = %v, want prefix %q", err, tc.want)
			}
		})
	}

	ok := `{` + servers + `,"authorities":{"x.example":{}},"server_listener_resource_name_template":"xdstp://x.example/envoy.config.listener.v3.Listener/grpc/server/%s"}`
	bs, err := xdsclient.ParseBootstrap([]byte(ok))
	if err != nil {
		t.Fatalf("valid xdstp server template: %v", err)
	}
	if got := bs.ServerListenerName("10.0.0.1:8080"); got != "xdstp://x.example/envoy.config.listener.v3.Listener/grpc/server/10.0.0.1:8080" {
		t.Errorf("ServerListenerName = %q", got)
	}
}

func TestCanonicalResourceName(t *testing.T) {
	for _, tc := range []struct {
		typeURL, name, want, wantErr string
	}{
		{typeLDS, "payments:8080", "payments:8080", ""},
		{typeLDS, "xdstp://a/envoy.config.listener.v3.Listener/x?b=2&a=1&c=0", "xdstp://a/envoy.config.listener.v3.Listener/x?a=1&b=2&c=0", ""},
		{typeLDS, "xdstp://a/envoy.config.listener.v3.Listener/x/y", "xdstp://a/envoy.config.listener.v3.Listener/x/y", ""},
		{"", "xdstp:///envoy.config.cluster.v3.Cluster/x", "xdstp:///envoy.config.cluster.v3.Cluster/x", ""},
		{typeRDS, "xdstp://a/envoy.config.listener.v3.Listener/x", "", `type "envoy.config.listener.v3.Listener" does not match the resource type "envoy.config.route.v3.RouteConfiguration"`},
		{typeLDS, "xdstp://a", "", "missing the resource type"},
		{typeLDS, "xdstp://a/envoy.config.listener.v3.Listener/", "", "empty resource id"},
		{typeLDS, "xdstp://a/envoy.config.listener.v3.Listener/x#alt", "", "fragments"},
		{typeLDS, "xdstp://a/envoy.config.listener.v3.Listener/x?a=%zz", "", "context parameter"},
	} {
		got, err := xdsclient.CanonicalResourceName(tc.typeURL, tc.name)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("CanonicalResourceName(%q) err = %v, want %q", tc.name, err, tc.wantErr)
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("CanonicalResourceName(%q) = %q, %v; want %q", tc.name, got, err, tc.want)
		}
	}
}

func TestFederationEachStreamSpeaksItsServersProtocol(t *testing.T) {
	ctx := testutil.Context(t)
	top, srvA, srvB := xdstest.NewServer(t), xdstest.NewServer(t), xdstest.NewServer(t)
	nameA, nameB := xdstpListener(authorityA, "svc"), xdstpListener(authorityB, "svc")
	setListeners(t, srvA, map[string]string{nameA: "ra"})
	setListeners(t, srvB, map[string]string{nameB: "rb"})
	bs := federatedBootstrap(top, srvA, srvB)
	b := bs.Authorities[authorityB]
	b.Servers[0].ServerFeatures = []string{xdsclient.ServerFeatureDelta}
	c := newFederatedClient(t, bs)
	evA, evB := newEvents[*xdsclient.Listener](), newEvents[*xdsclient.Listener]()
	c.WatchListener(nameA, evA.fn)
	c.WatchListener(nameB, evB.fn)
	if ev := next(ctx, t, evA, nil); !isValue(ev) || ev.Resource.HTTP.RouteConfigName != "ra" {
		t.Fatalf("A: %+v", ev)
	}
	if ev := next(ctx, t, evB, nil); !isValue(ev) || ev.Resource.HTTP.RouteConfigName != "rb" {
		t.Fatalf("B: %+v", ev)
	}
	if n := len(srvA.DeltaRequests()); n != 0 || len(srvA.Requests()) == 0 {
		t.Errorf("server A: %d delta and %d SotW requests, want SotW only", n, len(srvA.Requests()))
	}
	if _, err := srvB.WaitForDeltaRequest(ctx, func(r *discoverypb.DeltaDiscoveryRequest) bool {
		return slices.Equal(r.GetResourceNamesSubscribe(), []string{nameB})
	}); err != nil || len(srvB.Requests()) != 0 {
		t.Errorf("server B: want a delta subscription to %q and no SotW request (err %v, %d SotW)", nameB, err, len(srvB.Requests()))
	}
}
