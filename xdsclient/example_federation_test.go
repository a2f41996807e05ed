package xdsclient_test

import (
	"fmt"

	"mesh/xdsclient"
)

func ExampleBootstrap_ClientListenerName() {
	bs, err := xdsclient.ParseBootstrap([]byte(`{
		"xds_servers": [{"server_uri": "istiod.istio-system.svc:15010", "channel_creds": [{"type": "insecure"}]}],
		"authorities": {
			"xds.other.example": {
				"xds_servers": [{"server_uri": "xds.other.example:443", "channel_creds": [{"type": "tls"}]}]
			}
		}
	}`))
	if err != nil {
		fmt.Println(err)
		return
	}
	// No authority: the default template ("%s" when unset), top-level servers.
	fmt.Println(bs.ClientListenerName("payments.default.svc.cluster.local:8080"))
	// An authority: its template, fetched from its own servers.
	fmt.Println(bs.ClientListenerName("xds://xds.other.example/payments:8080"))
	// Output:
	// payments.default.svc.cluster.local:8080
	// xdstp://xds.other.example/envoy.config.listener.v3.Listener/payments:8080
}

func ExampleParseBootstrap_authorityTemplate() {
	_, err := xdsclient.ParseBootstrap([]byte(`{
		"xds_servers": [{"server_uri": "127.0.0.1:15010", "channel_creds": [{"type": "insecure"}]}],
		"authorities": {"a.example": {"client_listener_resource_name_template": "xdstp://b.example/envoy.config.listener.v3.Listener/%s"}}
	}`))
	fmt.Println(err)
	// Output:
	// bootstrap: authorities.a.example.client_listener_resource_name_template: must start with "xdstp://a.example/" (got "xdstp://b.example/envoy.config.listener.v3.Listener/%s")
}

func ExampleCanonicalResourceName() {
	name, err := xdsclient.CanonicalResourceName(
		"type.googleapis.com/envoy.config.cluster.v3.Cluster",
		"xdstp://a.example/envoy.config.cluster.v3.Cluster/payments?zone=z1&project=7")
	fmt.Println(name, err)
	// Output:
	// xdstp://a.example/envoy.config.cluster.v3.Cluster/payments?project=7&zone=z1 <nil>
}
