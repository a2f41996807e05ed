package xdsclient_test

import (
	"context"
	"strings"
	"testing"

	adminpb "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	listenerpb "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcmpb "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	statuspb "github.com/envoyproxy/go-control-plane/envoy/service/status/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"go.opentelemetry.io/otel/attribute"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"mesh/internal/testutil"
	"mesh/xdsclient"
	"mesh/xdsclient/xdstest"
)

// statusMesh serves a good listener and cluster, a cluster "missing"
// (deleted by watchStatusMesh), and endpoints whose port is invalid.
func statusMesh(t *testing.T, srv *xdstest.Server) {
	t.Helper()
	setStatusMesh(t, srv, xdstest.EDSCluster("missing", false))
}

func setStatusMesh(t *testing.T, srv *xdstest.Server, extra ...types.Resource) {
	t.Helper()
	srv.SetResources(t, nodeID,
		[]types.Resource{xdstest.ClientListener(listenerName, routeName)},
		nil,
		append([]types.Resource{xdstest.EDSCluster(clusterV1, false), xdstest.EDSCluster(clusterV2, false)}, extra...),
		[]types.Resource{xdstest.Endpoints(clusterV1, "127.0.0.1:8080"), xdstest.Endpoints(clusterV2, "127.0.0.1:0")},
	)
}

// watchStatusMesh sets up one resource in each status and waits for them.
// A cluster is DOES_NOT_EXIST once the server deletes it: one never
// received is left to the does-not-exist timer, which the tests turn off.
func watchStatusMesh(ctx context.Context, t *testing.T, srv *xdstest.Server, c *xdsclient.Client) {
	t.Helper()
	lds, cds, missing, bad := newEvents[*xdsclient.Listener](), newEvents[*xdsclient.Cluster](), newEvents[*xdsclient.Cluster](), newEvents[*xdsclient.Endpoints]()
	c.WatchListener(listenerName, lds.fn)
	c.WatchCluster(clusterV1, cds.fn)
	c.WatchCluster("missing", missing.fn)
	c.WatchEndpoints(clusterV2, bad.fn)
	c.WatchRouteConfig("never-sent", func(xdsclient.Event[*xdsclient.RouteConfig]) {})
	next(ctx, t, lds, isValue)
	next(ctx, t, cds, isValue)
	next(ctx, t, missing, isValue)
	setStatusMesh(t, srv)
	next(ctx, t, missing, isNotFound)
	next(ctx, t, bad, func(ev xdsclient.Event[*xdsclient.Endpoints]) bool { return ev.Err != nil })
}

func TestDumpAndCSDS(t *testing.T) {
	ctx := testutil.Context(t)
	srv := xdstest.NewServer(t)
	statusMesh(t, srv)
	c := newClient(t, srv, xdsclient.WithResourceTimeout(0))
	watchStatusMesh(ctx, t, srv, c)

	want := map[string]xdsclient.ResourceStatusKind{
		"cluster/" + clusterV1:                 xdsclient.StatusAcked,
		"cluster/missing":                      xdsclient.StatusDoesNotExist,
		"cluster_load_assignment/" + clusterV2: xdsclient.StatusNACKed,
		"listener/" + listenerName:             xdsclient.StatusAcked,
		"route_config/never-sent":              xdsclient.StatusRequested,
	}
	dump := c.Dump()
	if len(dump) != len(want) {
		t.Fatalf("Dump has %d entries, want %d: %+v", len(dump), len(want), dump)
	}
	for _, rs := range dump {
		if got := want[rs.Type+"/"+rs.Name]; rs.Status != got {
			t.Errorf("%s %s: status %s, want %s", rs.Type, rs.Name, rs.Status, got)
		}
		switch rs.Status {
		case xdsclient.StatusAcked:
			if (rs.Version != "1" && rs.Version != "2") || rs.UpdatedAt.IsZero() || rs.Error != nil {
				t.Errorf("acked entry = %+v", rs)
			}
		case xdsclient.StatusNACKed:
			if rs.Error == nil || !strings.Contains(rs.Error.Error(), "port_value") {
				t.Errorf("nacked entry = %+v", rs)
			}
		case xdsclient.StatusDoesNotExist:
			if rs.Error == nil || !strings.Contains(rs.Error.Error(), `cluster "missing"`) || !strings.Contains(rs.Error.Error(), srv.Addr()) {
				t.Errorf("missing entry = %+v", rs)
			}
		}
	}

	// The same through CSDS, fetched and streamed over real gRPC.
	csds := csdsClient(t, c)
	resp, err := csds.FetchClientStatus(ctx, &statuspb.ClientStatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	stream, err := csds.StreamClientStatus(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.Send(&statuspb.ClientStatusRequest{}); err != nil {
		t.Fatal(err)
	}
	streamed, err := stream.Recv()
	if err != nil {
		t.Fatal(err)
	}
	_ = stream.CloseSend()
	for _, r := range []*statuspb.ClientStatusResponse{resp, streamed} {
		if len(r.GetConfig()) != 1 || r.GetConfig()[0].GetNode().GetId() != nodeID {
			t.Fatalf("CSDS config = %v", r)
		}
		// Every field the client wrote is one go-control-plane's types know,
		// with the wire type they expect (csds.go encodes it by hand).
		if u := unknownFields(r.ProtoReflect()); u != "" {
			t.Errorf("CSDS response has fields statuspb does not know: %s", u)
		}
		got := map[string]adminpb.ClientResourceStatus{}
		wantConfig := map[adminpb.ClientResourceStatus]statuspb.ConfigStatus{
			adminpb.ClientResourceStatus_ACKED:          statuspb.ConfigStatus_SYNCED,
			adminpb.ClientResourceStatus_NACKED:         statuspb.ConfigStatus_ERROR,
			adminpb.ClientResourceStatus_DOES_NOT_EXIST: statuspb.ConfigStatus_UNKNOWN,
			adminpb.ClientResourceStatus_REQUESTED:      statuspb.ConfigStatus_NOT_SENT,
		}
		for i, g := range r.GetConfig()[0].GetGenericXdsConfigs() {
			got[g.GetName()] = g.GetClientStatus()
			if g.GetConfigStatus() != wantConfig[g.GetClientStatus()] {
				t.Errorf("CSDS %s: config status %v with client status %v", g.GetName(), g.GetConfigStatus(), g.GetClientStatus())
			}
			if d := dump[i]; d.Name != g.GetName() || d.TypeURL != g.GetTypeUrl() || d.Version != g.GetVersionInfo() ||
				(!d.UpdatedAt.IsZero() && !g.GetLastUpdated().AsTime().Equal(d.UpdatedAt)) {
				t.Errorf("CSDS entry %d = %v, Dump says %+v", i, g, d)
			}
			if g.GetClientStatus() == adminpb.ClientResourceStatus_NACKED && g.GetErrorState().GetLastUpdateAttempt() == nil {
				t.Errorf("nacked CSDS entry has no attempt time: %v", g)
			}
			switch g.GetClientStatus() {
			case adminpb.ClientResourceStatus_ACKED:
				if v := g.GetVersionInfo(); (v != "1" && v != "2") || g.GetXdsConfig().GetTypeUrl() != g.GetTypeUrl() || g.GetLastUpdated() == nil {
					t.Errorf("acked CSDS entry = %v", g)
				}
			case adminpb.ClientResourceStatus_NACKED:
				if !strings.Contains(g.GetErrorState().GetDetails(), "port_value") || (g.GetErrorState().GetVersionInfo() != "1" && g.GetErrorState().GetVersionInfo() != "2") {
					t.Errorf("nacked CSDS entry = %v", g)
				}
			}
		}
		wantCSDS := map[string]adminpb.ClientResourceStatus{
			listenerName: adminpb.ClientResourceStatus_ACKED,
			clusterV1:    adminpb.ClientResourceStatus_ACKED,
			"missing":    adminpb.ClientResourceStatus_DOES_NOT_EXIST,
			clusterV2:    adminpb.ClientResourceStatus_NACKED,
			"never-sent": adminpb.ClientResourceStatus_REQUESTED,
		}
		for name, st := range wantCSDS {
			if got[name] != st {
				t.Errorf("CSDS %s = %v, want %v", name, got[name], st)
			}
		}
	}
}

func TestMetrics(t *testing.T) {
	ctx := testutil.Context(t)
	srv := xdstest.NewServer(t)
	statusMesh(t, srv)
	mp := newRecordingMeterProvider()
	c := newClient(t, srv, xdsclient.WithResourceTimeout(0), xdsclient.WithMeterProvider(mp))
	watchStatusMesh(ctx, t, srv, c)

	got := mp.collect(ctx)
	value := func(name string, attrs ...attribute.KeyValue) int64 {
		t.Helper()
		set := attribute.NewSet(attrs...)
		v, ok := got[name][set.Equivalent()]
		if !ok {
			t.Fatalf("no %s point with %v in %v", name, attrs, got[name])
		}
		return v
	}
	if v := value(xdsclient.MetricConnected); v != 1 {
		t.Errorf("connected = %d", v)
	}
	typ, status := attribute.Key("type"), attribute.Key("status")
	if v := value(xdsclient.MetricResources, typ.String("cluster"), status.String("ACKED")); v != 1 {
		t.Errorf("acked clusters = %d", v)
	}
	if v := value(xdsclient.MetricResources, typ.String("cluster"), status.String("DOES_NOT_EXIST")); v != 1 {
		t.Errorf("missing clusters = %d", v)
	}
	if v := value(xdsclient.MetricResources, typ.String("cluster_load_assignment"), status.String("NACKED")); v != 1 {
		t.Errorf("nacked endpoints = %d", v)
	}
	if v := value(xdsclient.MetricNACKs, typ.String("cluster_load_assignment")); v < 1 {
		t.Errorf("nacks = %d", v)
	}
	if v := value(xdsclient.MetricResourceUpdates, typ.String("listener")); v != 1 {
		t.Errorf("listener updates = %d", v)
	}
	_ = c.Close()
	if after := mp.collect(ctx); len(after[xdsclient.MetricConnected]) != 0 {
		t.Errorf("gauges still observed after Close: %v", after[xdsclient.MetricConnected])
	}
}

func TestIgnoredFieldsAreDumpedAndLoggedOnce(t *testing.T) {
	ctx := testutil.Context(t)
	srv := xdstest.NewServer(t)
	listener := func(statPrefix string) *listenerpb.Listener {
		hcm := xdstest.HCM(routeName)
		hcm.StatPrefix = statPrefix // changes the bytes, so each is a new version
		hcm.HttpFilters = append([]*hcmpb.HttpFilter{{
			Name:       "vendor.telemetry",
			IsOptional: true,
			ConfigType: &hcmpb.HttpFilter_TypedConfig{TypedConfig: xdstest.MustAny(wrapperspb.String("x"))},
		}}, hcm.HttpFilters...)
		return &listenerpb.Listener{Name: listenerName, ApiListener: &listenerpb.ApiListener{ApiListener: xdstest.MustAny(hcm)}}
	}
	set := func(prefix string) {
		srv.SetResources(t, nodeID, []types.Resource{listener(prefix)}, nil, []types.Resource{xdstest.EDSCluster(clusterV1, false)}, nil)
	}
	set("a")
	log, logs := bufferLogger()
	c := newClient(t, srv, xdsclient.WithLogger(log))
	lds := newEvents[*xdsclient.Listener]()
	c.WatchListener(listenerName, lds.fn)
	if ev := next(ctx, t, lds, isValue); len(ev.Resource.HTTP.HTTPFilters) != 1 {
		t.Fatalf("filters = %+v, want only the router", ev.Resource.HTTP.HTTPFilters)
	}
	set("b")
	next(ctx, t, lds, isValue)
	rs := statusOf(t, c, "listener", listenerName)
	if len(rs.Ignored) != 1 || !strings.Contains(rs.Ignored[0], "http_filters[0]") || !strings.Contains(rs.Ignored[0], "vendor.telemetry") {
		t.Fatalf("ignored = %q", rs.Ignored)
	}
	if n := strings.Count(logs.String(), "does not implement"); n != 1 {
		t.Fatalf("ignored field logged %d times, want once:\n%s", n, logs.String())
	}
}

// unknownFields names the unknown fields anywhere in m, "" if none.
func unknownFields(m protoreflect.Message) string {
	var out []string
	if len(m.GetUnknown()) > 0 {
		out = append(out, string(m.Descriptor().FullName()))
	}
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		switch {
		case fd.IsList() && fd.Message() != nil:
			for i := range v.List().Len() {
				if u := unknownFields(v.List().Get(i).Message()); u != "" {
					out = append(out, u)
				}
			}
		case fd.Message() != nil && !fd.IsMap():
			if u := unknownFields(v.Message()); u != "" {
				out = append(out, u)
			}
		}
		return true
	})
	return strings.Join(out, ", ")
}

// csdsClient is a CSDS client of c's status, served over real gRPC on
// 127.0.0.1.
func csdsClient(t *testing.T, c *xdsclient.Client) statuspb.ClientStatusDiscoveryServiceClient {
	t.Helper()
	gs := grpc.NewServer()
	c.RegisterCSDS(gs)
	cc, err := grpc.NewClient(testutil.Start(t, gs), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return statuspb.NewClientStatusDiscoveryServiceClient(cc)
}
