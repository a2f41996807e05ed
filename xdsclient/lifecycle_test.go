package xdsclient_test

import (
	"bytes"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"

	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"

	"mesh/internal/testutil"
	"mesh/xdsclient"
	"mesh/xdsclient/xdstest"
)

const typeCDS = "type.googleapis.com/envoy.config.cluster.v3.Cluster"

func bufferLogger() (*slog.Logger, *testutil.Buffer) {
	buf := &testutil.Buffer{}
	return slog.New(slog.NewTextHandler(buf, &slog.HandlerOptions{Level: slog.LevelDebug})), buf
}

// barrier returns once every callback queued so far has run: a new watch
// of a cached resource is delivered after them.
func barrier(t *testing.T, c *xdsclient.Client, cluster string) {
	t.Helper()
	ctx := testutil.Context(t)
	probe := newEvents[*xdsclient.Cluster]()
	cancel := c.WatchCluster(cluster, probe.fn)
	defer cancel()
	next(ctx, t, probe, nil)
}

func TestCacheServesWhileControlPlaneIsDown(t *testing.T) {
	ctx := testutil.Context(t)
	path := filepath.Join(t.TempDir(), "xds-cache")
	srv := xdstest.NewServer(t)
	setMesh(t, srv, []xdsclient.ClusterWeight{{Name: clusterV1, Weight: 1}}, "127.0.0.1:8080")

	first := newClient(t, srv, xdsclient.WithCache(path))
	cds, eds := newEvents[*xdsclient.Cluster](), newEvents[*xdsclient.Endpoints]()
	first.WatchCluster(clusterV1, cds.fn)
	first.WatchEndpoints(clusterV1, eds.fn)
	next(ctx, t, cds, isValue)
	next(ctx, t, eds, isValue)
	wantVersion := statusOf(t, first, "cluster", clusterV1).Version
	_ = first.Close() // flushes the cache file
	info, err := os.Stat(path)
	if err != nil {
		t.Fatalf("cache file: %v", err)
	}
	if info.Mode().Perm() != 0o600 {
		t.Fatalf("cache file mode = %v, want 0600", info.Mode().Perm())
	}

	srv.Stop()
	log, logs := bufferLogger()
	second := newClient(t, srv, xdsclient.WithCache(path), xdsclient.WithLogger(log))
	cds2, eds2 := newEvents[*xdsclient.Cluster](), newEvents[*xdsclient.Endpoints]()
	second.WatchCluster(clusterV1, cds2.fn)
	second.WatchEndpoints(clusterV1, eds2.fn)
	if ev := next(ctx, t, cds2, nil); !isValue(ev) || ev.Resource.Name != clusterV1 {
		t.Fatalf("cluster from cache = %+v", ev)
	}
	if ev := next(ctx, t, eds2, nil); !isValue(ev) || ev.Resource.Localities[0].Endpoints[0].Address != "127.0.0.1:8080" {
		t.Fatalf("endpoints from cache = %+v", ev)
	}
	// The control plane is down: the stream fails, the cache keeps serving.
	if ev := next(ctx, t, cds2, nil); !errors.Is(ev.Err, xdsclient.ErrStreamFailed) {
		t.Fatalf("event with control plane down = %+v", ev)
	}
	if rs := statusOf(t, second, "cluster", clusterV1); rs.Status != xdsclient.StatusAcked || rs.Version != wantVersion || !rs.FromCache || rs.Source != srv.Addr() {
		t.Fatalf("status of cached cluster = %+v, want ACKED version %q", rs, wantVersion)
	}
	if !strings.Contains(logs.String(), "loaded last-good cache") || !strings.Contains(logs.String(), "age=") {
		t.Fatalf("load not logged with its age:\n%s", logs.String())
	}

	// When the control plane returns, its version replaces the cached one.
	setMesh(t, srv, []xdsclient.ClusterWeight{{Name: clusterV1, Weight: 1}}, "127.0.0.1:9191")
	srv.Restart(t)
	if ev := next(ctx, t, eds2, isValue); ev.Resource.Localities[0].Endpoints[0].Address != "127.0.0.1:9191" {
		t.Fatalf("endpoints after control plane returned = %+v", ev)
	}
	if rs := statusOf(t, second, "cluster_load_assignment", clusterV1); rs.FromCache {
		t.Fatalf("status after the server answered = %+v, want FromCache false", rs)
	}
}

// A delta client restarted with a cache tells the server which versions
// it already holds, so nothing unchanged is resent.
func TestCacheSeedsDeltaInitialVersions(t *testing.T) {
	ctx := testutil.Context(t)
	path := filepath.Join(t.TempDir(), "xds-cache")
	srv := xdstest.NewServer(t)
	setMesh(t, srv, []xdsclient.ClusterWeight{{Name: clusterV1, Weight: 1}}, "127.0.0.1:8080")
	first := newDeltaClient(t, srv, xdsclient.WithCache(path))
	eds := newEvents[*xdsclient.Endpoints]()
	first.WatchEndpoints(clusterV1, eds.fn)
	next(ctx, t, eds, isValue)
	version := statusOf(t, first, "cluster_load_assignment", clusterV1).Version
	_ = first.Close()
	before := len(srv.DeltaRequests())

	second := newDeltaClient(t, srv, xdsclient.WithCache(path))
	eds2 := newEvents[*xdsclient.Endpoints]()
	second.WatchEndpoints(clusterV1, eds2.fn)
	if ev := next(ctx, t, eds2, nil); !isValue(ev) {
		t.Fatalf("cached endpoints = %+v", ev)
	}
	req, err := srv.WaitForDeltaRequest(ctx, func(r *discoverypb.DeltaDiscoveryRequest) bool {
		return r.GetTypeUrl() == typeEDS && r.GetInitialResourceVersions()[clusterV1] != ""
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := req.GetInitialResourceVersions()[clusterV1]; got != version {
		t.Fatalf("initial_resource_versions = %q, want the cached %q", got, version)
	}
	if len(srv.DeltaRequests()) <= before {
		t.Fatal("no request from the second client")
	}
}

func TestCacheRefusesCorruptOrForeignFile(t *testing.T) {
	ctx := testutil.Context(t)
	dir := t.TempDir()
	srv := xdstest.NewServer(t)
	setMesh(t, srv, []xdsclient.ClusterWeight{{Name: clusterV1, Weight: 1}}, "127.0.0.1:8080")
	good := filepath.Join(dir, "good")
	writer := newClient(t, srv, xdsclient.WithCache(good))
	cds := newEvents[*xdsclient.Cluster]()
	writer.WatchCluster(clusterV1, cds.fn)
	next(ctx, t, cds, isValue)
	_ = writer.Close()
	data, err := os.ReadFile(good)
	if err != nil {
		t.Fatal(err)
	}
	srv.Stop()

	flipped := bytes.Clone(data)
	flipped[len(flipped)-3] ^= 0x20
	foreign := filepath.Join(dir, "foreign")
	cases := []struct {
		name, path string
		bs         func(*xdsclient.Bootstrap)
		data       []byte
		wantLog    string
	}{
		{"flipped byte", filepath.Join(dir, "flipped"), nil, flipped, "checksum mismatch"},
		{"truncated", filepath.Join(dir, "truncated"), nil, data[:len(data)/2], "checksum mismatch"},
		{"not a cache", filepath.Join(dir, "garbage"), nil, []byte("{\"hello\": 1}\n"), "header"},
		{"other node", foreign, func(bs *xdsclient.Bootstrap) { bs.Node.ID = "someone-else" }, data, "written for node"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if err := os.WriteFile(tc.path, tc.data, 0o600); err != nil {
				t.Fatal(err)
			}
			bs := srv.Bootstrap(nodeID)
			if tc.bs != nil {
				tc.bs(bs)
			}
			log, logs := bufferLogger()
			c, err := xdsclient.New(bs, xdsclient.WithCache(tc.path), xdsclient.WithLogger(log), xdsclient.WithBackoff(fastBackoff))
			if err != nil {
				t.Fatalf("New must not fail on a bad cache: %v", err)
			}
			t.Cleanup(func() { _ = c.Close() })
			ev := newEvents[*xdsclient.Cluster]()
			c.WatchCluster(clusterV1, ev.fn)
			// With nothing cached the first event is the stream failure.
			if got := next(ctx, t, ev, nil); !errors.Is(got.Err, xdsclient.ErrStreamFailed) {
				t.Fatalf("first event = %+v, want only stream errors", got)
			}
			if !strings.Contains(logs.String(), "ignoring last-good cache") || !strings.Contains(logs.String(), tc.wantLog) {
				t.Fatalf("refusal not logged with %q:\n%s", tc.wantLog, logs.String())
			}
		})
	}
}

func TestFallbackToSecondServerAndBack(t *testing.T) {
	ctx := testutil.Context(t)
	primary, fallback := xdstest.NewServer(t), xdstest.NewServer(t)
	setMesh(t, primary, []xdsclient.ClusterWeight{{Name: clusterV1, Weight: 1}}, "127.0.0.1:1111")
	setMesh(t, fallback, []xdsclient.ClusterWeight{{Name: clusterV1, Weight: 1}}, "127.0.0.1:2222")
	primary.Stop()

	bs := primary.Bootstrap(nodeID)
	bs.Servers = append(bs.Servers, fallback.Bootstrap(nodeID).Servers...)
	c, err := xdsclient.New(bs, xdsclient.WithBackoff(fastBackoff))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	eds := newEvents[*xdsclient.Endpoints]()
	c.WatchEndpoints(clusterV1, eds.fn)
	if ev := next(ctx, t, eds, isValue); ev.Resource.Localities[0].Endpoints[0].Address != "127.0.0.1:2222" {
		t.Fatalf("endpoints with primary down = %+v, want the fallback's", ev)
	}
	if rs := statusOf(t, c, "cluster_load_assignment", clusterV1); rs.Source != fallback.Addr() {
		t.Fatalf("source = %q, want fallback %q", rs.Source, fallback.Addr())
	}

	primary.Restart(t)
	if ev := next(ctx, t, eds, isValue); ev.Resource.Localities[0].Endpoints[0].Address != "127.0.0.1:1111" {
		t.Fatalf("endpoints after primary returned = %+v, want the primary's", ev)
	}
	if rs := statusOf(t, c, "cluster_load_assignment", clusterV1); rs.Source != primary.Addr() {
		t.Fatalf("source = %q, want primary %q", rs.Source, primary.Addr())
	}
}

func TestIgnoreResourceDeletion(t *testing.T) {
	ctx := testutil.Context(t)
	srv := xdstest.NewServer(t)
	setMesh(t, srv, []xdsclient.ClusterWeight{{Name: clusterV1, Weight: 1}}, "127.0.0.1:8080")
	bs := srv.Bootstrap(nodeID)
	bs.Servers[0].ServerFeatures = []string{xdsclient.ServerFeatureIgnoreResourceDeletion}
	log, logs := bufferLogger()
	c, err := xdsclient.New(bs, xdsclient.WithBackoff(fastBackoff), xdsclient.WithLogger(log))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	cds := newEvents[*xdsclient.Cluster]()
	c.WatchCluster(clusterV1, cds.fn)
	next(ctx, t, cds, isValue)

	version := srv.SetResources(t, nodeID,
		[]types.Resource{xdstest.ClientListener(listenerName, routeName)},
		[]types.Resource{xdstest.RouteConfig(routeName, "payments", xdsclient.ClusterWeight{Name: clusterV1, Weight: 1})},
		[]types.Resource{xdstest.EDSCluster(clusterV2, false)},
		nil,
	)
	if _, err := srv.WaitForRequest(ctx, func(r *discoverypb.DiscoveryRequest) bool {
		return r.GetTypeUrl() == typeCDS && r.GetVersionInfo() == version
	}); err != nil {
		t.Fatal(err)
	}
	barrier(t, c, clusterV1)
	for {
		ev, ok := cds.pop()
		if !ok {
			break
		}
		if ev.NotFound {
			t.Fatal("deletion reported despite ignore_resource_deletion")
		}
	}
	if rs := statusOf(t, c, "cluster", clusterV1); rs.Status != xdsclient.StatusAcked {
		t.Fatalf("status = %+v", rs)
	}
	if !strings.Contains(logs.String(), "ignoring deletion") {
		t.Fatalf("deletion not logged:\n%s", logs.String())
	}
}

// A process closes its channels (cancelling their watches) before its
// client: the cache must still hold what they used, even when a response
// for another watch is written after the cancels.
func TestCacheKeepsResourcesAfterTheirWatchesEnd(t *testing.T) {
	ctx := testutil.Context(t)
	path := filepath.Join(t.TempDir(), "xds-cache")
	srv := xdstest.NewServer(t)
	setMesh(t, srv, []xdsclient.ClusterWeight{{Name: clusterV1, Weight: 1}, {Name: clusterV2, Weight: 1}}, "127.0.0.1:8080")

	first := newClient(t, srv, xdsclient.WithCache(path))
	cds := newEvents[*xdsclient.Cluster]()
	cancel := first.WatchCluster(clusterV1, cds.fn)
	next(ctx, t, cds, isValue)
	cancel()
	// A later response (for another cluster) rewrites the cache file.
	other := newEvents[*xdsclient.Cluster]()
	first.WatchCluster(clusterV2, other.fn)
	next(ctx, t, other, isValue)
	_ = first.Close()

	srv.Stop()
	second := newClient(t, srv, xdsclient.WithCache(path))
	cds2 := newEvents[*xdsclient.Cluster]()
	second.WatchCluster(clusterV1, cds2.fn)
	if ev := next(ctx, t, cds2, nil); !isValue(ev) || ev.Resource.Name != clusterV1 {
		t.Fatalf("cluster %s from cache after its watch ended = %+v", clusterV1, ev)
	}
}
