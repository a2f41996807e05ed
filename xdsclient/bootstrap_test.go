package xdsclient

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// istioBootstrap is shaped like the file istio-agent writes for proxyless gRPC.
const istioBootstrap = `{
  "xds_servers": [{
    "server_uri": "unix:///etc/istio/proxy/XDS",
    "channel_creds": [{"type": "google_default"}, {"type": "insecure"}],
    "server_features": ["xds_v3"]
  }],
  "node": {
    "id": "sidecar~10.244.0.7~echo-v1.default~default.svc.cluster.local",
    "cluster": "echo.default",
    "metadata": {"GENERATOR": "grpc", "INSTANCE_IPS": "10.244.0.7", "LABELS": {"app": "echo"}, "ISTIO_VERSION": "1.31.0"},
    "locality": {"region": "us-east1", "zone": "us-east1-b"}
  },
  "certificate_providers": {
    "default": {
      "plugin_name": "file_watcher",
      "config": {
        "certificate_file": "/var/lib/istio/data/cert-chain.pem",
        "private_key_file": "/var/lib/istio/data/key.pem",
        "ca_certificate_file": "/var/lib/istio/data/root-cert.pem",
        "refresh_interval": "900s"
      }
    },
    "spiffe": {"plugin_name": "some_future_plugin", "config": {"x": 1}}
  },
  "server_listener_resource_name_template": "xds.istio.io/grpc/lds/inbound/%s",
  "authorities": {
    "mesh.example": {
      "client_listener_resource_name_template": "xdstp://mesh.example/envoy.config.listener.v3.Listener/%s",
      "xds_servers": [{"server_uri": "127.0.0.1:15010", "channel_creds": [{"type": "tls", "config": {"ca_certificate_file": "/ca.pem"}}]}]
    }
  }
}`

func TestParseBootstrapIstioShape(t *testing.T) {
	bs, err := ParseBootstrap([]byte(istioBootstrap))
	if err != nil {
		t.Fatalf("ParseBootstrap: %v", err)
	}
	if bs.Node.ID != "sidecar~10.244.0.7~echo-v1.default~default.svc.cluster.local" || bs.Node.Cluster != "echo.default" {
		t.Errorf("node = %+v", bs.Node)
	}
	if bs.Node.Metadata["GENERATOR"] != "grpc" || bs.Node.Metadata["LABELS"].(map[string]any)["app"] != "echo" {
		t.Errorf("metadata = %v", bs.Node.Metadata)
	}
	if bs.Node.Locality != (Locality{Region: "us-east1", Zone: "us-east1-b"}) {
		t.Errorf("locality = %+v", bs.Node.Locality)
	}
	if len(bs.Servers) != 1 || bs.Servers[0].URI != "unix:///etc/istio/proxy/XDS" {
		t.Fatalf("servers = %+v", bs.Servers)
	}
	// google_default is unsupported and skipped; insecure remains.
	if cc := bs.Servers[0].ChannelCreds; len(cc) != 1 || cc[0].Type != CredsInsecure {
		t.Errorf("channel creds = %+v", cc)
	}
	fw := bs.CertificateProviders["default"].FileWatcher
	if fw == nil || fw.CertificateFile != "/var/lib/istio/data/cert-chain.pem" || fw.PrivateKeyFile != "/var/lib/istio/data/key.pem" ||
		fw.CACertificateFile != "/var/lib/istio/data/root-cert.pem" || fw.RefreshInterval != 900*time.Second {
		t.Errorf("file watcher = %+v", fw)
	}
	if p := bs.CertificateProviders["spiffe"]; p.PluginName != "some_future_plugin" || p.FileWatcher != nil || string(p.Config) != `{"x": 1}` {
		t.Errorf("unknown plugin kept as %+v", p)
	}
	if bs.ServerListenerResourceNameTemplate != "xds.istio.io/grpc/lds/inbound/%s" {
		t.Errorf("server template = %q", bs.ServerListenerResourceNameTemplate)
	}
	if a := bs.Authorities["mesh.example"]; len(a.Servers) != 1 || a.Servers[0].ChannelCreds[0].Type != CredsTLS {
		t.Errorf("authority = %+v", a)
	}
}

func TestParseBootstrapDefaultRefreshInterval(t *testing.T) {
	bs, err := ParseBootstrap([]byte(`{"xds_servers":[{"server_uri":"x:1","channel_creds":[{"type":"insecure"}]}],
		"certificate_providers":{"default":{"plugin_name":"file_watcher","config":{"ca_certificate_file":"/ca.pem"}}}}`))
	if err != nil {
		t.Fatal(err)
	}
	if got := bs.CertificateProviders["default"].FileWatcher.RefreshInterval; got != 10*time.Minute {
		t.Errorf("refresh interval = %v, want 10m", got)
	}
}

func TestParseBootstrapErrors(t *testing.T) {
	const creds = `"channel_creds":[{"type":"insecure"}]`
	tests := []struct {
		name, json, want string
	}{
		{"not json", `{`, "bootstrap: invalid JSON"},
		{"no servers", `{}`, "bootstrap: xds_servers: at least one server is required"},
		{"missing uri", `{"xds_servers":[{` + creds + `}]}`, "bootstrap: xds_servers[0].server_uri: missing"},
		{"second server missing uri", `{"xds_servers":[{"server_uri":"a:1",` + creds + `},{` + creds + `}]}`, "bootstrap: xds_servers[1].server_uri: missing"},
		{"no supported creds", `{"xds_servers":[{"server_uri":"a:1","channel_creds":[{"type":"google_default"}]}]}`, `bootstrap: xds_servers[0].channel_creds: server "a:1" has no supported type`},
		{"no creds", `{"xds_servers":[{"server_uri":"a:1"}]}`, `bootstrap: xds_servers[0].channel_creds: server "a:1" has no supported type`},
		{"wrong type", `{"xds_servers":[{"server_uri":5}]}`, "bootstrap: xds_servers.server_uri: want string"},
		{"metadata not object", `{"node":{"metadata":[1]},"xds_servers":[{"server_uri":"a:1",` + creds + `}]}`, "bootstrap: node.metadata: want a JSON object"},
		{"file watcher empty", `{"xds_servers":[{"server_uri":"a:1",` + creds + `}],"certificate_providers":{"default":{"plugin_name":"file_watcher","config":{}}}}`,
			"bootstrap: certificate_providers.default.config.certificate_file: missing"},
		{"file watcher key only", `{"xds_servers":[{"server_uri":"a:1",` + creds + `}],"certificate_providers":{"default":{"plugin_name":"file_watcher","config":{"private_key_file":"/k"}}}}`,
			"bootstrap: certificate_providers.default.config.certificate_file: missing"},
		{"file watcher cert only", `{"xds_servers":[{"server_uri":"a:1",` + creds + `}],"certificate_providers":{"default":{"plugin_name":"file_watcher","config":{"certificate_file":"/c"}}}}`,
			"bootstrap: certificate_providers.default.config.private_key_file: missing"},
		{"file watcher no config", `{"xds_servers":[{"server_uri":"a:1",` + creds + `}],"certificate_providers":{"default":{"plugin_name":"file_watcher"}}}`,
			"bootstrap: certificate_providers.default.config: missing"},
		{"bad refresh", `{"xds_servers":[{"server_uri":"a:1",` + creds + `}],"certificate_providers":{"default":{"plugin_name":"file_watcher","config":{"ca_certificate_file":"/c","refresh_interval":"10m"}}}}`,
			"bootstrap: certificate_providers.default.config.refresh_interval:"},
		{"no plugin name", `{"xds_servers":[{"server_uri":"a:1",` + creds + `}],"certificate_providers":{"x":{}}}`,
			"bootstrap: certificate_providers.x.plugin_name: missing"},
		{"tls half pair", `{"xds_servers":[{"server_uri":"a:1","channel_creds":[{"type":"tls","config":{"certificate_file":"/c"}}]}]}`,
			"bootstrap: xds_servers[0].channel_creds[0].config: certificate_file and private_key_file must be set together"},
		{"authority template", `{"xds_servers":[{"server_uri":"a:1",` + creds + `}],"authorities":{"a.example":{"client_listener_resource_name_template":"xdstp://b.example/x/%s"}}}`,
			"bootstrap: authorities.a.example.client_listener_resource_name_template:"},
		{"authority server", `{"xds_servers":[{"server_uri":"a:1",` + creds + `}],"authorities":{"a.example":{"xds_servers":[{` + creds + `}]}}}`,
			"bootstrap: authorities.a.example.xds_servers[0].server_uri: missing"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseBootstrap([]byte(tc.json))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error = %v, want it to contain %q", err, tc.want)
			}
		})
	}
}

func TestBootstrapFromEnv(t *testing.T) {
	dir := t.TempDir()
	meshFile := filepath.Join(dir, "mesh.json")
	grpcFile := filepath.Join(dir, "grpc.json")
	write := func(path, uri string) {
		t.Helper()
		data := `{"xds_servers":[{"server_uri":"` + uri + `","channel_creds":[{"type":"insecure"}]}]}`
		if err := os.WriteFile(path, []byte(data), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write(meshFile, "mesh:1")
	write(grpcFile, "grpc:1")
	inline := `{"xds_servers":[{"server_uri":"inline:1","channel_creds":[{"type":"insecure"}]}]}`
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

	tests := []struct {
		name    string
		env     map[string]string
		wantURI string
		wantErr string
	}{
		{"mesh first", map[string]string{envMeshBootstrap: meshFile, envGRPCBootstrap: grpcFile, envGRPCBootstrapConfig: inline}, "mesh:1", ""},
		{"grpc file", map[string]string{envGRPCBootstrap: grpcFile, envGRPCBootstrapConfig: inline}, "grpc:1", ""},
		{"inline", map[string]string{envGRPCBootstrapConfig: inline}, "inline:1", ""},
		{"none", nil, "", "none of MESH_BOOTSTRAP, GRPC_XDS_BOOTSTRAP, GRPC_XDS_BOOTSTRAP_CONFIG is set"},
		{"missing file", map[string]string{envGRPCBootstrap: filepath.Join(dir, "nope.json")}, "", "GRPC_XDS_BOOTSTRAP: bootstrap: reading " + filepath.Join(dir, "nope.json")},
		{"bad inline", map[string]string{envGRPCBootstrapConfig: `{}`}, "", "GRPC_XDS_BOOTSTRAP_CONFIG: bootstrap: xds_servers"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			bs, err := bootstrapFromEnv(env(tc.env))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if bs.Servers[0].URI != tc.wantURI {
				t.Errorf("server = %q, want %q", bs.Servers[0].URI, tc.wantURI)
			}
		})
	}
}

func TestValidateBootstrapBuiltInCode(t *testing.T) {
	bs := &Bootstrap{Servers: []ServerConfig{{URI: "a:1", ChannelCreds: []ChannelCreds{{Type: CredsInsecure}}}},
		CertificateProviders: map[string]CertificateProvider{"default": {PluginName: PluginFileWatcher}}}
	if _, err := New(bs); err == nil || !strings.Contains(err.Error(), "certificate_providers.default.config: missing") {
		t.Fatalf("New error = %v", err)
	}
	bs.CertificateProviders = nil
	c, err := New(bs)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
}
