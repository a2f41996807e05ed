package xdsclient

import (
	"encoding/json"
	"time"
)

// Bootstrap is the gRPC xDS bootstrap (gRFC A27, A29, A36, A47), as written by
// istio-agent for proxyless gRPC and by mesh's embedded control plane.
type Bootstrap struct {
	Node                 Node
	Servers              []ServerConfig
	CertificateProviders map[string]CertificateProvider
	// ServerListenerResourceNameTemplate turns a server's listening "ip:port"
	// into its listener name by replacing "%s" (gRFC A36).
	ServerListenerResourceNameTemplate        string
	ClientDefaultListenerResourceNameTemplate string
	Authorities                               map[string]Authority
}

// Node identifies this process to the control plane.
type Node struct {
	ID       string
	Cluster  string
	Metadata map[string]any
	Locality Locality
}

// ServerConfig is one xds_servers entry.
type ServerConfig struct {
	URI string
	// ChannelCreds are tried in order; the first supported one is used.
	ChannelCreds   []ChannelCreds
	ServerFeatures []string
	// CallCreds are all applied (gRFC A97); types mesh does not support
	// are dropped when parsing.
	CallCreds []CallCreds
}

// CallCreds is one call_creds entry (gRFC A97): "jwt_token_file" with
// {"jwt_token_file": <path>}, a bearer token read from that file and sent
// on the ADS stream, as istio-agent's token authenticates to istiod.
type CallCreds struct {
	Type   string
	Config json.RawMessage
}

// ChannelCreds is one channel_creds entry: "insecure" or "tls" (with an
// optional gRFC A65 config of certificate files).
type ChannelCreds struct {
	Type   string
	Config json.RawMessage
}

// CertificateProvider is one certificate_providers instance (gRFC A29).
type CertificateProvider struct {
	PluginName string
	Config     json.RawMessage
	// FileWatcher is the decoded config when PluginName is "file_watcher".
	FileWatcher *FileWatcherConfig
}

// FileWatcherConfig is the file_watcher plugin's config.
type FileWatcherConfig struct {
	CertificateFile   string
	PrivateKeyFile    string
	CACertificateFile string
	RefreshInterval   time.Duration
}

// Authority is one authorities entry (gRFC A47).
type Authority struct {
	ClientListenerResourceNameTemplate string
	Servers                            []ServerConfig
}
