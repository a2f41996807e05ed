package xdstest_test

import (
	"testing"
	"time"

	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"

	"mesh/internal/testutil"
	"mesh/xdsclient"
	"mesh/xdsclient/xdstest"
)

// The builders' output must pass mesh's own validation, served for real.
func TestServerServesBuiltResources(t *testing.T) {
	ctx := testutil.Context(t)
	srv := xdstest.NewServer(t)
	const node = "node-1"
	inbound := "xds.istio.io/grpc/lds/inbound/127.0.0.1:9443"
	srv.SetResources(t, node,
		[]types.Resource{xdstest.ClientListener("svc:80", "rc"), xdstest.ServerListener(inbound, "127.0.0.1", 9443, true)},
		[]types.Resource{xdstest.RouteConfig("rc", "svc", xdsclient.ClusterWeight{Name: "c1", Weight: 3}, xdsclient.ClusterWeight{Name: "c2", Weight: 1})},
		[]types.Resource{xdstest.EDSCluster("c1", true)},
		[]types.Resource{xdstest.Endpoints("c1", "127.0.0.1:8080", "[::1]:8081")},
	)
	bs := srv.Bootstrap(node)
	bs.CertificateProviders = map[string]xdsclient.CertificateProvider{xdstest.CertProvider: {
		PluginName:  xdsclient.PluginFileWatcher,
		FileWatcher: &xdsclient.FileWatcherConfig{CACertificateFile: "/unused/root.pem", RefreshInterval: time.Minute},
	}}
	c, err := xdsclient.New(bs)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })

	listeners := make(chan xdsclient.Event[*xdsclient.Listener], 4)
	c.WatchListener(inbound, func(ev xdsclient.Event[*xdsclient.Listener]) { listeners <- ev })
	clusters := make(chan xdsclient.Event[*xdsclient.Cluster], 4)
	c.WatchCluster("c1", func(ev xdsclient.Event[*xdsclient.Cluster]) { clusters <- ev })
	endpoints := make(chan xdsclient.Event[*xdsclient.Endpoints], 4)
	c.WatchEndpoints("c1", func(ev xdsclient.Event[*xdsclient.Endpoints]) { endpoints <- ev })

	select {
	case ev := <-listeners:
		if ev.Err != nil || ev.NotFound || !ev.Resource.IsServer() || ev.Resource.FilterChains[0].TLS == nil || !ev.Resource.FilterChains[0].TLS.RequireClientCertificate {
			t.Fatalf("server listener = %+v", ev)
		}
	case <-ctx.Done():
		t.Fatal("no listener")
	}
	select {
	case ev := <-clusters:
		if ev.Err != nil || ev.Resource.TLS == nil || ev.Resource.TLS.Roots.Certificate != "ROOTCA" {
			t.Fatalf("cluster = %+v", ev)
		}
	case <-ctx.Done():
		t.Fatal("no cluster")
	}
	select {
	case ev := <-endpoints:
		if ev.Err != nil || len(ev.Resource.Localities[0].Endpoints) != 2 || ev.Resource.Localities[0].Endpoints[1].Address != "[::1]:8081" {
			t.Fatalf("endpoints = %+v", ev)
		}
	case <-ctx.Done():
		t.Fatal("no endpoints")
	}
	// Every response was ACKed: no request carries an error.
	if _, err := srv.WaitForRequest(ctx, func(r *discoverypb.DiscoveryRequest) bool {
		return r.GetTypeUrl() == "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment" && r.GetVersionInfo() == "1"
	}); err != nil {
		t.Fatal(err)
	}
	for _, r := range srv.Requests() {
		if r.GetErrorDetail() != nil {
			t.Errorf("unexpected NACK: %v", r)
		}
	}
	srv.Stop()
	srv.Stop() // idempotent
}
