package xdsclient_test

import (
	"fmt"
	"log/slog"
	"time"

	"google.golang.org/grpc"

	"mesh/xdsclient"
)

func ExampleParseBootstrap() {
	bs, err := xdsclient.ParseBootstrap([]byte(`{
		"xds_servers": [{"server_uri": "istiod.istio-system.svc:15010", "channel_creds": [{"type": "insecure"}]}],
		"node": {"id": "sidecar~10.0.0.7~payments-v1.default~default.svc.cluster.local"},
		"certificate_providers": {"default": {"plugin_name": "file_watcher", "config": {
			"certificate_file": "/var/run/mesh/cert.pem", "private_key_file": "/var/run/mesh/key.pem",
			"ca_certificate_file": "/var/run/mesh/root.pem", "refresh_interval": "900s"}}},
		"server_listener_resource_name_template": "xds.istio.io/grpc/lds/inbound/%s"
	}`))
	if err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(bs.Servers[0].URI)
	fmt.Println(bs.CertificateProviders["default"].FileWatcher.RefreshInterval)
	// Output:
	// istiod.istio-system.svc:15010
	// 15m0s
}

func ExampleParseBootstrap_error() {
	_, err := xdsclient.ParseBootstrap([]byte(`{"xds_servers": [{"channel_creds": [{"type": "insecure"}]}]}`))
	fmt.Println(err)
	// Output:
	// bootstrap: xds_servers[0].server_uri: missing
}

func ExampleBootstrap_Validate() {
	bs := &xdsclient.Bootstrap{
		Servers: []xdsclient.ServerConfig{{URI: "127.0.0.1:15010", ChannelCreds: []xdsclient.ChannelCreds{{Type: "google_default"}}}},
	}
	fmt.Println(bs.Validate())
	// Output:
	// bootstrap: xds_servers[0].channel_creds: server "127.0.0.1:15010" has no supported type (supported: "insecure", "tls")
}

func ExampleClient_WatchCluster() {
	bs, err := xdsclient.BootstrapFromEnv()
	if err != nil {
		fmt.Println(err)
		return
	}
	client, err := xdsclient.New(bs,
		xdsclient.WithLogger(slog.Default()),
		xdsclient.WithResourceTimeout(30*time.Second))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer client.Close()
	cancel := client.WatchCluster("outbound|8080|v1|payments.default.svc.cluster.local", func(ev xdsclient.Event[*xdsclient.Cluster]) {
		if ev.Err == nil && !ev.NotFound {
			fmt.Println("watch endpoints", ev.Resource.EndpointsName())
		}
	})
	defer cancel()
}

func ExampleDefaultBackoff() {
	d := xdsclient.DefaultBackoff(0)
	fmt.Println(d >= 800*time.Millisecond && d <= 1200*time.Millisecond)
	fmt.Println(xdsclient.DefaultBackoff(50) <= 144*time.Second)
	// Output:
	// true
	// true
}

// Dump shows where each watched resource stands; here the control plane
// is unreachable, so the cluster is still REQUESTED.
func ExampleClient_Dump() {
	bs := &xdsclient.Bootstrap{
		Node:    xdsclient.Node{ID: "example"},
		Servers: []xdsclient.ServerConfig{{URI: "127.0.0.1:1", ChannelCreds: []xdsclient.ChannelCreds{{Type: xdsclient.CredsInsecure}}}},
	}
	client, err := xdsclient.New(bs, xdsclient.WithResourceTimeout(0))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer client.Close()
	cancel := client.WatchCluster("outbound|8080||payments.default.svc.cluster.local", func(xdsclient.Event[*xdsclient.Cluster]) {})
	defer cancel()
	for _, rs := range client.Dump() {
		fmt.Println(rs.Type, rs.Name, rs.Status)
	}
	// Output:
	// cluster outbound|8080||payments.default.svc.cluster.local REQUESTED
}

// A primary delta server with a state-of-the-world fallback, and a
// last-good cache for restarts while both are down.
func ExampleWithCache_fallback() {
	bs := &xdsclient.Bootstrap{
		Node: xdsclient.Node{ID: "sidecar~10.0.0.7~payments-v1.default~default.svc.cluster.local"},
		Servers: []xdsclient.ServerConfig{
			{URI: "istiod.istio-system.svc:15010", ChannelCreds: []xdsclient.ChannelCreds{{Type: xdsclient.CredsInsecure}},
				ServerFeatures: []string{xdsclient.ServerFeatureDelta, xdsclient.ServerFeatureIgnoreResourceDeletion}},
			{URI: "istiod-backup.istio-system.svc:15010", ChannelCreds: []xdsclient.ChannelCreds{{Type: xdsclient.CredsInsecure}}},
		},
	}
	client, err := xdsclient.New(bs, xdsclient.WithCache("/var/lib/payments/xds-cache"))
	if err != nil {
		fmt.Println(err)
		return
	}
	defer client.Close()
	fmt.Println(len(client.Bootstrap().Servers), "servers")
	// Output: 2 servers
}

// The Client Status Discovery Service shows the client's resources to
// tools such as istioctl x describe or grpcdebug.
func ExampleClient_RegisterCSDS() {
	bs := &xdsclient.Bootstrap{
		Node:    xdsclient.Node{ID: "example"},
		Servers: []xdsclient.ServerConfig{{URI: "127.0.0.1:1", ChannelCreds: []xdsclient.ChannelCreds{{Type: xdsclient.CredsInsecure}}}},
	}
	client, err := xdsclient.New(bs)
	if err != nil {
		fmt.Println(err)
		return
	}
	defer client.Close()
	admin := grpc.NewServer()
	client.RegisterCSDS(admin)
	fmt.Println(len(admin.GetServiceInfo()["envoy.service.status.v3.ClientStatusDiscoveryService"].Methods), "methods")
	// Output: 2 methods
}
