package xdsclient

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"
	"time"
)

// Environment variables BootstrapFromEnv reads, in order of precedence.
const (
	envMeshBootstrap       = "MESH_BOOTSTRAP"
	envGRPCBootstrap       = "GRPC_XDS_BOOTSTRAP"
	envGRPCBootstrapConfig = "GRPC_XDS_BOOTSTRAP_CONFIG"
)

// The bootstrap's vocabulary mesh implements: credential types, server
// features (xds_servers[].server_features) and certificate provider
// plugins.
const (
	// Channel credential types mesh can dial an xDS server with.
	CredsInsecure = "insecure"
	CredsTLS      = "tls"

	// CallCredsJWTTokenFile is the call credentials type of gRFC A97: a
	// bearer token read from a file (istio-agent's istio-token, or the
	// credential the embedded control plane writes with a bootstrap) sent
	// as "authorization: Bearer <token>" on the ADS stream.
	CallCredsJWTTokenFile = "jwt_token_file"

	// ServerFeatureDelta selects the incremental (delta) ADS protocol for
	// that server instead of state of the world. It is mesh's own feature
	// name: the bootstrap says per server which protocol it speaks, so a
	// delta primary and a state-of-the-world fallback mix freely.
	ServerFeatureDelta = "delta"
	// ServerFeatureIgnoreResourceDeletion (gRFC A53) keeps serving a
	// listener or cluster the server deletes, logging the deletion instead
	// of reporting NotFound. Route configurations and endpoints are
	// deleted as usual.
	ServerFeatureIgnoreResourceDeletion = "ignore_resource_deletion"

	// PluginFileWatcher is the certificate provider plugin that reads PEM
	// files.
	PluginFileWatcher = "file_watcher"
)

// defaultRefreshInterval is file_watcher's refresh_interval when unset (gRFC A29).
const defaultRefreshInterval = 10 * time.Minute

// The JSON shapes of the bootstrap file. Fields that need a precise error
// path are decoded by hand from json.RawMessage.
type jsonBootstrap struct {
	Node                                      *jsonNode                   `json:"node"`
	XDSServers                                []jsonServer                `json:"xds_servers"`
	CertificateProviders                      map[string]jsonCertProvider `json:"certificate_providers"`
	ServerListenerResourceNameTemplate        string                      `json:"server_listener_resource_name_template"`
	ClientDefaultListenerResourceNameTemplate string                      `json:"client_default_listener_resource_name_template"`
	Authorities                               map[string]jsonAuthority    `json:"authorities"`
}

type jsonNode struct {
	ID       string          `json:"id"`
	Cluster  string          `json:"cluster"`
	Metadata json.RawMessage `json:"metadata"`
	Locality *Locality       `json:"locality"`
}

type jsonServer struct {
	ServerURI      string            `json:"server_uri"`
	ChannelCreds   []jsonChannelCred `json:"channel_creds"`
	ServerFeatures []string          `json:"server_features"`
	CallCreds      []jsonChannelCred `json:"call_creds"`
}

type jsonChannelCred struct {
	Type   string          `json:"type"`
	Config json.RawMessage `json:"config"`
}

type jsonCertProvider struct {
	PluginName string          `json:"plugin_name"`
	Config     json.RawMessage `json:"config"`
}

type jsonFileWatcher struct {
	CertificateFile   string `json:"certificate_file"`
	PrivateKeyFile    string `json:"private_key_file"`
	CACertificateFile string `json:"ca_certificate_file"`
	RefreshInterval   string `json:"refresh_interval"`
}

// jsonTLSCreds is the gRFC A65 config of "tls" channel creds.
type jsonTLSCreds struct {
	CACertificateFile string `json:"ca_certificate_file"`
	CertificateFile   string `json:"certificate_file"`
	PrivateKeyFile    string `json:"private_key_file"`
	RefreshInterval   string `json:"refresh_interval"`
}

type jsonAuthority struct {
	ClientListenerResourceNameTemplate string       `json:"client_listener_resource_name_template"`
	XDSServers                         []jsonServer `json:"xds_servers"`
}

// ParseBootstrap parses and validates a gRPC xDS bootstrap JSON document.
// Errors name the JSON path of the offending field, e.g.
// "bootstrap: xds_servers[0].server_uri: missing".
func ParseBootstrap(data []byte) (*Bootstrap, error) {
	var raw jsonBootstrap
	if err := json.Unmarshal(data, &raw); err != nil {
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) && typeErr.Field != "" {
			return nil, fmt.Errorf("bootstrap: %s: want %s, got JSON %s: %w", typeErr.Field, typeErr.Type, typeErr.Value, err)
		}
		return nil, fmt.Errorf("bootstrap: invalid JSON: %w", err)
	}
	bs := &Bootstrap{
		ServerListenerResourceNameTemplate:        raw.ServerListenerResourceNameTemplate,
		ClientDefaultListenerResourceNameTemplate: raw.ClientDefaultListenerResourceNameTemplate,
	}
	if n := raw.Node; n != nil {
		bs.Node = Node{ID: n.ID, Cluster: n.Cluster}
		if n.Locality != nil {
			bs.Node.Locality = *n.Locality
		}
		if len(n.Metadata) > 0 && !bytes.Equal(bytes.TrimSpace(n.Metadata), []byte("null")) {
			var md map[string]any
			if err := json.Unmarshal(n.Metadata, &md); err != nil {
				return nil, fmt.Errorf("bootstrap: node.metadata: want a JSON object: %w", err)
			}
			bs.Node.Metadata = md
		}
	}
	servers, err := convertServers(raw.XDSServers, "xds_servers")
	if err != nil {
		return nil, err
	}
	bs.Servers = servers
	if len(raw.CertificateProviders) > 0 {
		bs.CertificateProviders = make(map[string]CertificateProvider, len(raw.CertificateProviders))
		for name, p := range raw.CertificateProviders {
			path := "certificate_providers." + name
			cp := CertificateProvider{PluginName: p.PluginName, Config: p.Config}
			if p.PluginName == PluginFileWatcher {
				fw, err := parseFileWatcher(p.Config, path+".config")
				if err != nil {
					return nil, err
				}
				cp.FileWatcher = fw
			}
			bs.CertificateProviders[name] = cp
		}
	}
	if len(raw.Authorities) > 0 {
		bs.Authorities = make(map[string]Authority, len(raw.Authorities))
		for _, name := range slices.Sorted(maps.Keys(raw.Authorities)) {
			a := raw.Authorities[name]
			servers, err := convertServers(a.XDSServers, "authorities."+name+".xds_servers")
			if err != nil {
				return nil, err
			}
			bs.Authorities[name] = Authority{
				ClientListenerResourceNameTemplate: a.ClientListenerResourceNameTemplate,
				Servers:                            servers,
			}
		}
	}
	if err := bs.Validate(); err != nil {
		return nil, err
	}
	return bs, nil
}

// convertServers keeps only supported channel creds, so a server whose
// creds are all unknown fails validation with its name in the error.
func convertServers(raw []jsonServer, path string) ([]ServerConfig, error) {
	var out []ServerConfig
	for i, s := range raw {
		sc := ServerConfig{URI: s.ServerURI, ServerFeatures: s.ServerFeatures}
		var seen []string
		for _, c := range s.ChannelCreds {
			seen = append(seen, c.Type)
			if c.Type == CredsInsecure || c.Type == CredsTLS {
				sc.ChannelCreds = append(sc.ChannelCreds, ChannelCreds{Type: c.Type, Config: c.Config})
			}
		}
		for _, c := range s.CallCreds {
			if c.Type == CallCredsJWTTokenFile {
				sc.CallCreds = append(sc.CallCreds, CallCreds{Type: c.Type, Config: c.Config})
			}
		}
		if len(sc.ChannelCreds) == 0 {
			return nil, fmt.Errorf("bootstrap: %s[%d].channel_creds: server %q has no supported type (got %q; supported: %q, %q)",
				path, i, s.ServerURI, seen, CredsInsecure, CredsTLS)
		}
		out = append(out, sc)
	}
	return out, nil
}

func parseFileWatcher(raw json.RawMessage, path string) (*FileWatcherConfig, error) {
	if len(raw) == 0 {
		return nil, fmt.Errorf("bootstrap: %s: missing", path)
	}
	var fw jsonFileWatcher
	if err := json.Unmarshal(raw, &fw); err != nil {
		return nil, fmt.Errorf("bootstrap: %s: %w", path, err)
	}
	cfg := &FileWatcherConfig{
		CertificateFile:   fw.CertificateFile,
		PrivateKeyFile:    fw.PrivateKeyFile,
		CACertificateFile: fw.CACertificateFile,
		RefreshInterval:   defaultRefreshInterval,
	}
	if fw.RefreshInterval != "" {
		d, err := parseProtoDuration(fw.RefreshInterval)
		if err != nil {
			return nil, fmt.Errorf("bootstrap: %s.refresh_interval: %w", path, err)
		}
		cfg.RefreshInterval = d
	}
	if err := cfg.validate(path); err != nil {
		return nil, err
	}
	return cfg, nil
}

// parseProtoDuration parses the protobuf JSON form of a Duration: decimal
// seconds with an "s" suffix, e.g. "600s" or "1.5s".
func parseProtoDuration(s string) (time.Duration, error) {
	if !strings.HasSuffix(s, "s") || strings.ContainsAny(s[:len(s)-1], "hmun") {
		return 0, fmt.Errorf("%q is not a protobuf JSON duration like \"600s\"", s)
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("%q is not a protobuf JSON duration like \"600s\": %w", s, err)
	}
	if d <= 0 {
		return 0, fmt.Errorf("%q must be positive", s)
	}
	return d, nil
}

func (c *FileWatcherConfig) validate(path string) error {
	switch {
	case c.CertificateFile == "" && c.PrivateKeyFile == "" && c.CACertificateFile == "":
		return fmt.Errorf("bootstrap: %s.certificate_file: missing (set certificate_file and private_key_file, ca_certificate_file, or both)", path)
	case c.CertificateFile == "" && c.PrivateKeyFile != "":
		return fmt.Errorf("bootstrap: %s.certificate_file: missing (private_key_file is set)", path)
	case c.CertificateFile != "" && c.PrivateKeyFile == "":
		return fmt.Errorf("bootstrap: %s.private_key_file: missing (certificate_file is set)", path)
	case c.RefreshInterval < 0:
		return fmt.Errorf("bootstrap: %s.refresh_interval: must not be negative", path)
	}
	return nil
}

// Validate checks b for what a Client needs: at least one server with a
// URI and supported channel creds, and well-formed certificate providers
// and authorities. New calls it for a Bootstrap built in code.
func (b *Bootstrap) Validate() error {
	if b == nil {
		return errors.New("bootstrap: nil")
	}
	if len(b.Servers) == 0 {
		return errors.New("bootstrap: xds_servers: at least one server is required")
	}
	if err := validateServers(b.Servers, "xds_servers"); err != nil {
		return err
	}
	for name, p := range b.CertificateProviders {
		path := "certificate_providers." + name
		if name == "" {
			return errors.New("bootstrap: certificate_providers: empty instance name")
		}
		if p.PluginName == "" {
			return fmt.Errorf("bootstrap: %s.plugin_name: missing", path)
		}
		if p.PluginName == PluginFileWatcher {
			if p.FileWatcher == nil {
				return fmt.Errorf("bootstrap: %s.config: missing", path)
			}
			if err := p.FileWatcher.validate(path + ".config"); err != nil {
				return err
			}
		}
	}
	if err := b.validateListenerTemplate("client_default_listener_resource_name_template", b.ClientDefaultListenerResourceNameTemplate); err != nil {
		return err
	}
	if err := b.validateListenerTemplate("server_listener_resource_name_template", b.ServerListenerResourceNameTemplate); err != nil {
		return err
	}
	// Sorted, so the same bad bootstrap always reports the same error.
	names := slices.Sorted(maps.Keys(b.Authorities))
	for _, name := range names {
		a := b.Authorities[name]
		path := "authorities." + name
		if strings.ContainsAny(name, "/?#") {
			return fmt.Errorf("bootstrap: authorities: %q is not a valid URI authority", name)
		}
		prefix := xdstpScheme + name + "/"
		if t := a.ClientListenerResourceNameTemplate; t != "" {
			if !strings.HasPrefix(t, prefix) {
				return fmt.Errorf("bootstrap: %s.client_listener_resource_name_template: must start with %q (got %q)", path, prefix, t)
			}
			if _, err := parseXDSTPName(strings.ReplaceAll(t, "%s", "x")); err != nil {
				return fmt.Errorf("bootstrap: %s.client_listener_resource_name_template: %w", path, err)
			}
		}
		if err := validateServers(a.Servers, path+".xds_servers"); err != nil {
			return err
		}
	}
	return nil
}

// validateListenerTemplate checks a top-level listener name template: an
// xdstp one must be a well-formed name with a %s and an authority the
// bootstrap lists (gRFC A47).
func (b *Bootstrap) validateListenerTemplate(field, tmpl string) error {
	if !isXDSTP(tmpl) {
		return nil
	}
	if !strings.Contains(tmpl, "%s") {
		return fmt.Errorf("bootstrap: %s: an xdstp template must contain %%s (got %q)", field, tmpl)
	}
	n, err := parseXDSTPName(strings.ReplaceAll(tmpl, "%s", "x"))
	if err != nil {
		return fmt.Errorf("bootstrap: %s: %w", field, err)
	}
	if want := strings.TrimPrefix(typeURLListener, typeURLPrefix); n.typeName != want {
		return fmt.Errorf("bootstrap: %s: type %q must be %q", field, n.typeName, want)
	}
	if _, ok := b.Authorities[n.authority]; !ok {
		return fmt.Errorf("bootstrap: %s: authority %q is not in authorities", field, n.authority)
	}
	return nil
}

func validateServers(servers []ServerConfig, path string) error {
	for i, s := range servers {
		if s.URI == "" {
			return fmt.Errorf("bootstrap: %s[%d].server_uri: missing", path, i)
		}
		supported := false
		for j, c := range s.ChannelCreds {
			switch c.Type {
			case CredsInsecure:
				supported = true
			case CredsTLS:
				supported = true
				if _, err := parseTLSCredsConfig(c.Config); err != nil {
					return fmt.Errorf("bootstrap: %s[%d].channel_creds[%d].config: %w", path, i, j, err)
				}
			}
		}
		if !supported {
			return fmt.Errorf("bootstrap: %s[%d].channel_creds: server %q has no supported type (supported: %q, %q)",
				path, i, s.URI, CredsInsecure, CredsTLS)
		}
		for j, c := range s.CallCreds {
			if c.Type != CallCredsJWTTokenFile {
				continue
			}
			if _, err := parseTokenFileConfig(c.Config); err != nil {
				return fmt.Errorf("bootstrap: %s[%d].call_creds[%d].config: %w", path, i, j, err)
			}
			if firstSupportedCreds(s.ChannelCreds) != CredsTLS {
				// A bearer token must never travel in the clear.
				return fmt.Errorf("bootstrap: %s[%d].call_creds[%d]: %q needs %q channel creds, not %q",
					path, i, j, CallCredsJWTTokenFile, CredsTLS, firstSupportedCreds(s.ChannelCreds))
			}
		}
	}
	return nil
}

// firstSupportedCreds is the channel creds type a client dials with.
func firstSupportedCreds(creds []ChannelCreds) string {
	for _, c := range creds {
		if c.Type == CredsInsecure || c.Type == CredsTLS {
			return c.Type
		}
	}
	return ""
}

func parseTLSCredsConfig(raw json.RawMessage) (jsonTLSCreds, error) {
	var cfg jsonTLSCreds
	if len(bytes.TrimSpace(raw)) == 0 || bytes.Equal(bytes.TrimSpace(raw), []byte("null")) {
		return cfg, nil
	}
	if err := json.Unmarshal(raw, &cfg); err != nil {
		return cfg, fmt.Errorf("invalid tls config: %w", err)
	}
	if (cfg.CertificateFile == "") != (cfg.PrivateKeyFile == "") {
		return cfg, errors.New("certificate_file and private_key_file must be set together")
	}
	return cfg, nil
}

// LoadBootstrapFile reads and parses the bootstrap file at path.
func LoadBootstrapFile(path string) (*Bootstrap, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("bootstrap: reading %s: %w", path, err)
	}
	bs, err := ParseBootstrap(data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return bs, nil
}

// BootstrapFromEnv loads the bootstrap from the file named by MESH_BOOTSTRAP,
// else the file named by GRPC_XDS_BOOTSTRAP, else the inline JSON in
// GRPC_XDS_BOOTSTRAP_CONFIG.
func BootstrapFromEnv() (*Bootstrap, error) {
	return bootstrapFromEnv(os.Getenv)
}

func bootstrapFromEnv(getenv func(string) string) (*Bootstrap, error) {
	for _, name := range []string{envMeshBootstrap, envGRPCBootstrap} {
		if path := getenv(name); path != "" {
			bs, err := LoadBootstrapFile(path)
			if err != nil {
				return nil, fmt.Errorf("%s: %w", name, err)
			}
			return bs, nil
		}
	}
	if inline := getenv(envGRPCBootstrapConfig); inline != "" {
		bs, err := ParseBootstrap([]byte(inline))
		if err != nil {
			return nil, fmt.Errorf("%s: %w", envGRPCBootstrapConfig, err)
		}
		return bs, nil
	}
	return nil, fmt.Errorf("bootstrap: none of %s, %s, %s is set", envMeshBootstrap, envGRPCBootstrap, envGRPCBootstrapConfig)
}
