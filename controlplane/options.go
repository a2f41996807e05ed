package controlplane

import (
	"fmt"
	"log/slog"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
)

// Option configures a Server built by New.
type Option interface {
	apply(*settings)
}

// DaemonOption configures NewDaemon's server as well as New: every option
// but those a daemon takes from its DaemonConfig (WithStateDir, WithConfig,
// WithConfigFile) and WithCA, which a state directory replaces. So NewDaemon is never handed an option it would
// override.
type DaemonOption interface {
	Option
	daemonOption()
}

type optionFunc func(*settings)

func (f optionFunc) apply(s *settings) { f(s) }

type daemonOptionFunc func(*settings)

func (f daemonOptionFunc) apply(s *settings) { f(s) }
func (daemonOptionFunc) daemonOption()       {}

type settings struct {
	endpointGrace     time.Duration
	address           string
	logger            *slog.Logger
	trustDomain       string
	clusterID         string
	configFile        string
	fileCheckInterval time.Duration
	caCertPEM         []byte
	caKeyPEM          []byte
	stateDir          string
	certTTL           time.Duration
	snapshotHook      func(nodeID string, resources map[string][]types.Resource)
	workloads         []Workload
	sds               bool          // see WithSDS
	sdsRotation       time.Duration // see WithSDSRotation
	plaintextXDS      bool          // see WithPlaintextXDS
	inCodeConfig      [][]byte      // see WithConfig
	pathNormalization PathNormalization
}

func defaultSettings() settings {
	return settings{
		address:           "127.0.0.1:0",
		logger:            slog.New(slog.DiscardHandler),
		trustDomain:       "cluster.local",
		clusterID:         DefaultClusterID,
		fileCheckInterval: time.Second,
		certTTL:           24 * time.Hour,
		endpointGrace:     DefaultEndpointGracePeriod,
	}
}

// WithAddress sets the TCP address the xDS server listens on
// (default "127.0.0.1:0": a free loopback port).
func WithAddress(addr string) DaemonOption {
	return daemonOptionFunc(func(s *settings) { s.address = addr })
}

// WithLogger sets the logger (default: discard).
func WithLogger(l *slog.Logger) DaemonOption {
	return daemonOptionFunc(func(s *settings) {
		if l != nil {
			s.logger = l
		}
	})
}

// WithTrustDomain sets the SPIFFE trust domain of issued SVIDs and of the
// subject alt names in cluster TLS settings (default "cluster.local").
func WithTrustDomain(td string) DaemonOption {
	return daemonOptionFunc(func(s *settings) { s.trustDomain = td })
}

// DefaultClusterID is the cluster ID bootstraps carry unless told
// otherwise: istiod's default, and the name Kiali gives its home cluster.
const DefaultClusterID = "Kubernetes"

// WithClusterID sets the CLUSTER_ID written into bootstraps (default
// DefaultClusterID); a Workload's own ClusterID overrides it. Istio's
// metrics label source_cluster and destination_cluster with it.
func WithClusterID(id string) DaemonOption {
	return daemonOptionFunc(func(s *settings) { s.clusterID = id })
}

// WithConfigFile loads Istio YAML from path at New and then watches it: a
// changed valid file replaces the whole configuration (but WithConfig's);
// an invalid one is logged and the last good configuration stays. If the
// file does not load at New, New returns the error.
func WithConfigFile(path string) Option {
	return optionFunc(func(s *settings) { s.configFile = path })
}

// withFileCheckInterval sets how often the config file's content is
// compared with the last one read (default 1s); tests shorten it.
func withFileCheckInterval(d time.Duration) Option {
	return optionFunc(func(s *settings) { s.fileCheckInterval = d })
}

// WithCA makes the server sign SVIDs with the given CA certificate and key
// (PEM) instead of a fresh self-signed root.
func WithCA(certPEM, keyPEM []byte) Option {
	return optionFunc(func(s *settings) {
		s.caCertPEM = append([]byte(nil), certPEM...)
		s.caKeyPEM = append([]byte(nil), keyPEM...)
	})
}

// WithStateDir keeps the control plane's CA certificate and key and the
// key that signs the CA service's tokens in dir (created 0700; keys written
// 0600), so a restart keeps the trust workloads already have: their
// certificate files stay valid and their tokens keep working. An empty dir
// starts a new CA there. It cannot be combined with WithCA.
func WithStateDir(dir string) Option {
	return optionFunc(func(s *settings) { s.stateDir = dir })
}

// WithCertTTL sets the lifetime of issued SVIDs (default 24h).
func WithCertTTL(d time.Duration) DaemonOption {
	return daemonOptionFunc(func(s *settings) { s.certTTL = d })
}

// WithWorkloads declares workloads up front, as BootstrapJSON does, so that
// configuration (for example a config file loaded by New) may route to their
// services before they connect.
func WithWorkloads(ws ...Workload) DaemonOption {
	return daemonOptionFunc(func(s *settings) { s.workloads = append(s.workloads, ws...) })
}

// WithSnapshotHook registers fn, called with a node's resources (keyed by
// type URL) right before its snapshot is set. fn may change the map, for
// example to inject invalid resources and observe a NACK. It runs with the
// server's lock held and must not call the Server.
//
// # Experimental
//
// This hook exists for tests and may change or go away.
func WithSnapshotHook(fn func(nodeID string, resources map[string][]types.Resource)) DaemonOption {
	return daemonOptionFunc(func(s *settings) { s.snapshotHook = fn })
}

// DefaultEndpointGracePeriod is how long a workload's endpoints outlive its
// xDS stream by default.
const DefaultEndpointGracePeriod = 2 * time.Second

// WithEndpointGracePeriod sets how long a serving workload's endpoints stay
// in EDS after its xDS stream closes. A workload whose stream only
// reconnects (a network blip, a control plane restart on its side) keeps
// its endpoints and its clients notice nothing; one that is gone leaves
// when the period ends. 0 removes endpoints at once.
func WithEndpointGracePeriod(d time.Duration) DaemonOption {
	return daemonOptionFunc(func(s *settings) { s.endpointGrace = max(d, 0) })
}

// WithPlaintextXDS serves xDS and the CA without TLS and trusts what each
// node's metadata claims, with no proof: any process that reaches the
// port may then claim any workload, receive its SVID and key, and join
// its service. New logs it as insecure. Bootstraps then say "insecure"
// and carry no token. For tests of plaintext clients and demos on
// loopback only.
func WithPlaintextXDS() DaemonOption {
	return daemonOptionFunc(func(s *settings) { s.plaintextXDS = true })
}

// WithConfig loads Istio YAML at New, before any xDS request is answered:
// in-code configuration that takes effect at start, as a config file
// does, so a restarted control plane never serves a weaker one meanwhile.
// New fails if it does not load. A config file's content is applied on
// top of it. It may be given more than once.
func WithConfig(yaml []byte) Option {
	return optionFunc(func(s *settings) { s.inCodeConfig = append(s.inCodeConfig, append([]byte(nil), yaml...)) })
}

// PathNormalization is how servers normalize request paths before
// authorization, as Istio's meshConfig.pathNormalization names it.
type PathNormalization string

// Path normalizations, each including the one before (see istio.io,
// "Authorization Policy Normalization").
const (
	// PathNormalizationBase: RFC 3986 normalization with backslashes
	// read as slashes (Envoy's normalize_path). The default.
	PathNormalizationBase PathNormalization = "BASE"
	// PathNormalizationMergeSlashes also merges repeated slashes.
	PathNormalizationMergeSlashes PathNormalization = "MERGE_SLASHES"
	// PathNormalizationDecodeAndMergeSlashes also decodes %2F and %5C
	// first.
	PathNormalizationDecodeAndMergeSlashes PathNormalization = "DECODE_AND_MERGE_SLASHES"
)

// WithPathNormalization sets the path normalization of every inbound
// listener (default PathNormalizationBase), in the HttpConnectionManager
// fields Envoy reads: normalize_path, merge_slashes and
// path_with_escaped_slashes_action. New refuses an unknown value.
func WithPathNormalization(p PathNormalization) DaemonOption {
	return daemonOptionFunc(func(s *settings) { s.pathNormalization = p })
}

func validatePathNormalization(p PathNormalization) error {
	switch p {
	case "", PathNormalizationBase, PathNormalizationMergeSlashes, PathNormalizationDecodeAndMergeSlashes:
		return nil
	}
	return fmt.Errorf("path normalization %q: want %s, %s or %s", p,
		PathNormalizationBase, PathNormalizationMergeSlashes, PathNormalizationDecodeAndMergeSlashes)
}
