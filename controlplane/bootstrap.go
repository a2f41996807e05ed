package controlplane

import (
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
)

// Names of the files WriteBootstrap writes; they are istio-agent's.
const (
	CertChainFile = "cert-chain.pem"
	KeyFile       = "key.pem"
	RootCertFile  = "root-cert.pem"
	BootstrapFile = "bootstrap.json"
	// TokenFile holds the workload's enrollment token, the credential its
	// xDS streams prove it with (istio-agent's istio-token plays that role
	// for istiod). Mode 0600; treat it as a secret.
	TokenFile = "istio-token"
)

// Node metadata keys written into bootstraps and read back from connecting
// nodes.
const (
	metaNamespace      = "NAMESPACE"
	metaLabels         = "LABELS"
	metaServiceAccount = "SERVICE_ACCOUNT"
	metaWorkloadName   = "WORKLOAD_NAME"
	metaGenerator      = "GENERATOR"
	// metaClusterID is Istio's cluster ID; telemetry labels source_cluster
	// and destination_cluster with it, and Kiali drops series where it is
	// "unknown".
	metaClusterID = "CLUSTER_ID"
	// metaService is mesh's own key: the "host:port" service the node serves.
	metaService = "MESH_SERVICE"
	// metaAddress is mesh's own key: the "ip:port" the node serves on, when
	// known before it asks for its inbound listener.
	metaAddress = "MESH_ADDRESS"
)

// InboundListenerPrefix is the name prefix of server-side listeners; the
// bootstrap's server_listener_resource_name_template is this plus "%s".
const InboundListenerPrefix = "xds.istio.io/grpc/lds/inbound/"

// clusterDomain is the DNS suffix of in-mesh service hosts.
const clusterDomain = "svc.cluster.local"

// Workload describes one proxyless workload: who it is and which service it
// serves.
type Workload struct {
	// Name identifies the workload (like a pod name); required.
	Name string
	// Namespace defaults to "default".
	Namespace string
	// ServiceAccount defaults to "default"; it names the SPIFFE identity.
	ServiceAccount string
	// Service is the short name of the service this workload serves, e.g.
	// "payments"; its host becomes <svc>.<ns>.svc.cluster.local. Empty for a
	// client-only workload.
	Service string
	// Port is the service port, e.g. 8080; required with Service.
	Port uint32
	// Labels select the workload into DestinationRule subsets and policies.
	Labels map[string]string
	// Address is the optional "ip:port" the workload listens on. Without it,
	// the address is learned from the inbound listener the workload asks for.
	Address string
	// ClusterID is the Istio cluster the workload runs in; empty means the
	// control plane's (see WithClusterID).
	ClusterID string
}

var dnsLabel = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`)
var dnsSubdomain = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)

// Validate reports the first problem with w, naming the field.
func (w Workload) Validate() error {
	w = w.withDefaults()
	if w.Name == "" {
		return errors.New("workload: name: required")
	}
	if len(w.Name) > 253 || !dnsSubdomain.MatchString(w.Name) {
		return fmt.Errorf("workload %q: name: must be a lowercase DNS name", w.Name)
	}
	if len(w.Namespace) > 63 || !dnsLabel.MatchString(w.Namespace) {
		return fmt.Errorf("workload %q: namespace %q: must be a lowercase DNS label", w.Name, w.Namespace)
	}
	if len(w.ServiceAccount) > 253 || !dnsSubdomain.MatchString(w.ServiceAccount) {
		return fmt.Errorf("workload %q: service account %q: must be a lowercase DNS name", w.Name, w.ServiceAccount)
	}
	if w.Service != "" {
		if len(w.Service) > 63 || !dnsLabel.MatchString(w.Service) {
			return fmt.Errorf("workload %q: service %q: must be a short lowercase DNS label (no dots)", w.Name, w.Service)
		}
		if w.Port == 0 || w.Port > 65535 {
			return fmt.Errorf("workload %q: port %d: must be 1-65535 when service is set", w.Name, w.Port)
		}
	} else if w.Port != 0 {
		return fmt.Errorf("workload %q: port %d: set without service", w.Name, w.Port)
	}
	for k := range w.Labels {
		if k == "" {
			return fmt.Errorf("workload %q: labels: empty key", w.Name)
		}
	}
	if w.Address != "" {
		if _, _, err := parseHostPort(w.Address); err != nil {
			return fmt.Errorf("workload %q: address: %w", w.Name, err)
		}
	}
	if err := validateClusterID(w.ClusterID); err != nil {
		return fmt.Errorf("workload %q: cluster ID: %w", w.Name, err)
	}
	return nil
}

// validateClusterID accepts an empty ID (the default applies) or one that
// can travel as a metric label and a header value: no control characters,
// not "unknown" (what Kiali discards).
func validateClusterID(id string) error {
	if id == "unknown" {
		return errors.New(`"unknown" is what telemetry reports when no cluster ID is set; Kiali drops such series`)
	}
	for _, r := range id {
		if r < 0x21 || r == 0x7f {
			return fmt.Errorf("%q: must not contain spaces or control characters", id)
		}
	}
	return nil
}

func (w Workload) withDefaults() Workload {
	if w.Namespace == "" {
		w.Namespace = "default"
	}
	if w.ServiceAccount == "" {
		w.ServiceAccount = "default"
	}
	return w
}

// host is the service's fully qualified host, or "" for a client-only
// workload.
func (w Workload) host() string {
	if w.Service == "" {
		return ""
	}
	return w.Service + "." + w.Namespace + "." + clusterDomain
}

// parseHostPort splits "ip:port" and checks the ip is an IP literal.
func parseHostPort(addr string) (string, uint32, error) {
	host, portStr, err := net.SplitHostPort(addr)
	if err != nil {
		return "", 0, fmt.Errorf("%q: %w", addr, err)
	}
	if net.ParseIP(host) == nil {
		return "", 0, fmt.Errorf("%q: host %q is not an IP address", addr, host)
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil || port == 0 {
		return "", 0, fmt.Errorf("%q: port %q must be 1-65535", addr, portStr)
	}
	return host, uint32(port), nil
}

type bootstrapJSON struct {
	XDSServers                         []xdsServerJSON             `json:"xds_servers"`
	Node                               nodeJSON                    `json:"node"`
	CertificateProviders               map[string]certProviderJSON `json:"certificate_providers"`
	ServerListenerResourceNameTemplate string                      `json:"server_listener_resource_name_template"`
}

type xdsServerJSON struct {
	ServerURI      string            `json:"server_uri"`
	ChannelCreds   []channelCredJSON `json:"channel_creds"`
	ServerFeatures []string          `json:"server_features"`
	CallCreds      []channelCredJSON `json:"call_creds,omitempty"`
}

type channelCredJSON struct {
	Type   string            `json:"type"`
	Config map[string]string `json:"config,omitempty"`
}

type nodeJSON struct {
	ID       string         `json:"id"`
	Metadata map[string]any `json:"metadata"`
	Locality struct{}       `json:"locality"`
}

type certProviderJSON struct {
	PluginName string          `json:"plugin_name"`
	Config     fileWatcherJSON `json:"config"`
}

type fileWatcherJSON struct {
	CertificateFile   string `json:"certificate_file"`
	PrivateKeyFile    string `json:"private_key_file"`
	CACertificateFile string `json:"ca_certificate_file"`
	RefreshInterval   string `json:"refresh_interval"`
}

// BootstrapJSON returns the gRPC xDS bootstrap (gRFC A27) for w, shaped as
// istio-agent writes it for proxyless gRPC, pointing its "default"
// certificate provider at files in certDir. It also declares w to the
// server, so configuration may route to w's service before w connects.
//
// The xDS server is reached over TLS ("tls" channel creds, gRFC A65,
// trusting certDir/root-cert.pem) with the token in certDir/istio-token
// as call credentials (gRFC A97 jwt_token_file): an enrollment token
// (WriteBootstrap writes one) or a WorkloadToken, which proves w's
// identity while the rest of w comes from its declaration here. The
// SVID files are not needed to reach the server, so an SVID from
// elsewhere (SDS, a CSR source) is enough. With WithPlaintextXDS the
// bootstrap says "insecure" and names no credential.
func (s *Server) BootstrapJSON(w Workload, certDir string) ([]byte, error) {
	return s.bootstrapJSON(w, certDir, false)
}

// bootstrapJSON is BootstrapJSON; withCert adds the SVID files in certDir
// as the TLS client certificate of the xDS channel.
func (s *Server) bootstrapJSON(w Workload, certDir string, withCert bool) ([]byte, error) {
	if err := w.Validate(); err != nil {
		return nil, err
	}
	w = w.withDefaults()
	if err := s.declare(w); err != nil {
		return nil, err
	}
	labels := make(map[string]string, len(w.Labels))
	for k, v := range w.Labels {
		labels[k] = v
	}
	meta := map[string]any{
		metaNamespace:      w.Namespace,
		metaLabels:         labels,
		metaServiceAccount: w.ServiceAccount,
		metaWorkloadName:   w.Name,
		metaGenerator:      "grpc",
		metaClusterID:      cmp.Or(w.ClusterID, s.clusterID),
	}
	if h := w.host(); h != "" {
		meta[metaService] = net.JoinHostPort(h, strconv.FormatUint(uint64(w.Port), 10))
	}
	if w.Address != "" {
		meta[metaAddress] = w.Address
	}
	server := xdsServerJSON{
		ServerURI:      s.Addr(),
		ChannelCreds:   []channelCredJSON{{Type: "insecure"}},
		ServerFeatures: []string{"xds_v3"},
	}
	if !s.plaintext {
		tlsConfig := map[string]string{"ca_certificate_file": filepath.Join(certDir, RootCertFile)}
		if withCert {
			tlsConfig["certificate_file"] = filepath.Join(certDir, CertChainFile)
			tlsConfig["private_key_file"] = filepath.Join(certDir, KeyFile)
		}
		server.ChannelCreds = []channelCredJSON{{Type: "tls", Config: tlsConfig}}
		server.CallCreds = []channelCredJSON{{Type: "jwt_token_file", Config: map[string]string{
			"jwt_token_file": filepath.Join(certDir, TokenFile),
		}}}
	}
	b := bootstrapJSON{
		XDSServers: []xdsServerJSON{server},
		Node: nodeJSON{
			ID:       nodeID(w),
			Metadata: meta,
		},
		CertificateProviders: map[string]certProviderJSON{
			"default": {
				PluginName: "file_watcher",
				Config: fileWatcherJSON{
					CertificateFile:   filepath.Join(certDir, CertChainFile),
					PrivateKeyFile:    filepath.Join(certDir, KeyFile),
					CACertificateFile: filepath.Join(certDir, RootCertFile),
					RefreshInterval:   "900s",
				},
			},
		},
		ServerListenerResourceNameTemplate: InboundListenerPrefix + "%s",
	}
	out, err := json.MarshalIndent(b, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("encode bootstrap for workload %s/%s: %w", w.Namespace, w.Name, err)
	}
	return out, nil
}

// nodeID is the istio-style node id of w's bootstrap.
func nodeID(w Workload) string {
	ip := "127.0.0.1"
	if w.Address != "" {
		ip, _, _ = parseHostPort(w.Address)
	}
	return fmt.Sprintf("sidecar~%s~%s.%s~%s.%s", ip, w.Name, w.Namespace, w.Namespace, clusterDomain)
}

// WriteBootstrap enrolls w: it issues an SVID and an enrollment token for
// w and writes into dir the files istio-agent would: cert-chain.pem,
// key.pem, root-cert.pem, istio-token and bootstrap.json. The key, the
// token and the bootstrap are written with mode 0600 (a new dir 0700).
// It returns the bootstrap's path. The bootstrap's xDS channel sends both
// the token and the SVID (as TLS client certificate); either proves w,
// so a control plane restarted with the same CA (WithCA) but a new token
// key still knows w by its SVID.
//
// The token proves w's whole enrollment (name, identity, service, labels,
// address) to this server's xDS port: whoever holds it is w, so keep dir
// private to w.
func (s *Server) WriteBootstrap(dir string, w Workload) (string, error) {
	if err := w.Validate(); err != nil {
		return "", err
	}
	w = w.withDefaults()
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("bootstrap dir %q: %w", dir, err)
	}
	if err := os.MkdirAll(abs, 0o700); err != nil {
		return "", fmt.Errorf("bootstrap dir: %w", err)
	}
	chain, key, err := s.IssueSVID(w.Namespace, w.ServiceAccount)
	if err != nil {
		return "", err
	}
	data, err := s.bootstrapJSON(w, abs, true)
	if err != nil {
		return "", err
	}
	type file struct {
		name string
		data []byte
		mode os.FileMode
	}
	files := []file{
		{KeyFile, key, 0o600},
		{CertChainFile, chain, 0o644},
		{RootCertFile, s.RootPEM(), 0o644},
	}
	if !s.plaintext {
		token, err := s.certService.mintEnrollment(w, nodeID(w))
		if err != nil {
			return "", err
		}
		files = append(files, file{TokenFile, []byte(token + "\n"), 0o600})
	}
	// The bootstrap last: whoever watches for it finds the rest in place.
	files = append(files, file{BootstrapFile, data, 0o600})
	for _, f := range files {
		if err := writeFileAtomic(filepath.Join(abs, f.name), f.data, f.mode); err != nil {
			return "", err
		}
	}
	return filepath.Join(abs, BootstrapFile), nil
}

// writeFileAtomic renames a temporary file into place so that a watcher
// never reads a half-written file.
func writeFileAtomic(path string, data []byte, mode os.FileMode) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	name := tmp.Name()
	defer os.Remove(name) // no-op after a successful rename
	if err := tmp.Chmod(mode); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(name, path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
