package controlplane

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	networking "istio.io/api/networking/v1alpha3"
)

// Files the daemon keeps in its state directory, next to the CA's, all
// written with mode 0600.
const (
	// StateAPITokenFile holds the bearer token of the daemon's HTTP API:
	// whoever reads it may enroll workloads, so it is as secret as the CA key.
	StateAPITokenFile = "api-token"
	// StateAPIAddressFile holds the API's base URL, for meshctl -state.
	StateAPIAddressFile = "api-address"
	stateEnrollmentsDir = "enrollments"
	stateCanariesDir    = "canaries"
)

// DaemonConfig configures a Daemon.
//
// # Experimental
type DaemonConfig struct {
	// ConfigDir holds the Istio YAML (*.yaml, *.yml) to serve, plus Canary
	// objects (apiVersion mesh/v1alpha1); it may also name one file. It is
	// watched: a change that is rejected keeps the last good
	// configuration, and Status says why.
	ConfigDir string
	// StateDir keeps the CA, the token key, the API token, enrollment
	// records and canary state across restarts (files 0600).
	StateDir string
	// APIAddress is where the HTTP API listens, e.g. "127.0.0.1:15080";
	// a loopback address, since the API hands out keys over plain HTTP.
	APIAddress string
	// CheckInterval is how often ConfigDir is read (default 1s).
	CheckInterval time.Duration
}

// Validate reports what is missing.
func (c DaemonConfig) Validate() error {
	switch {
	case c.ConfigDir == "":
		return errors.New("config dir: required")
	case c.StateDir == "":
		return errors.New("state dir: required")
	case c.APIAddress == "":
		return errors.New("api address: required")
	}
	host, _, err := net.SplitHostPort(c.APIAddress)
	if err != nil {
		return fmt.Errorf("api address %q: %w", c.APIAddress, err)
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return fmt.Errorf("api address %q: not a loopback address; the API carries keys over plain HTTP", c.APIAddress)
	}
	return nil
}

// Daemon is the embedded control plane run as a long-running process, as
// `meshctl controlplane` runs it: configuration from a watched directory,
// state kept in a directory, and an HTTP API through which workloads are
// enrolled and canaries are steered.
//
// # Experimental
type Daemon struct {
	srv    *Server
	cfg    DaemonConfig
	logger *slog.Logger
	token  string
	api    *apiServer

	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu          sync.Mutex
	base        []*object          // last good objects read from ConfigDir
	baseHash    string             // of the files base was read from
	specs       map[string]Canary  // by host, from ConfigDir
	canaries    map[string]*canary // by host
	enrolled    map[string]Enrollment
	configErr   string // why the latest ConfigDir content is not in force
	appliedAt   time.Time
	adminURL    string
	analyses    map[string]context.CancelFunc // running analyses by host
	baselines   map[string][]metricsSample    // where each analysis's interval began
	analysisMu  sync.Mutex                    // one AnalyzeNow at a time
	metricsFunc func(ctx context.Context) []metricsSample
}

// NewDaemon loads ConfigDir and the state, starts the xDS server (opts as
// for New, e.g. WithAddress, less those DaemonConfig sets) with that
// configuration in force, then the
// API and the directory watch. Close stops them.
//
// # Experimental
func NewDaemon(ctx context.Context, cfg DaemonConfig, opts ...DaemonOption) (*Daemon, error) {
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("daemon: %w", err)
	}
	if cfg.CheckInterval <= 0 {
		cfg.CheckInterval = time.Second
	}
	d := &Daemon{cfg: cfg, canaries: map[string]*canary{}, enrolled: map[string]Enrollment{}, analyses: map[string]context.CancelFunc{}, baselines: map[string][]metricsSample{}}
	files, hash, err := readConfigDir(cfg.ConfigDir)
	if err != nil {
		return nil, err
	}
	base, specs, err := parseConfigFiles(files)
	if err != nil {
		return nil, err
	}
	d.base, d.baseHash, d.specs = base, hash, specs
	// Only a config that parses creates the state dir: bad input changes
	// nothing.
	if err := os.MkdirAll(cfg.StateDir, 0o700); err != nil {
		return nil, fmt.Errorf("state dir: %w", err)
	}
	if d.token, err = loadOrCreateToken(filepath.Join(cfg.StateDir, StateAPITokenFile)); err != nil {
		return nil, err
	}
	if d.enrolled, err = loadEnrollments(filepath.Join(cfg.StateDir, stateEnrollmentsDir)); err != nil {
		return nil, err
	}
	if d.canaries, err = loadCanaries(filepath.Join(cfg.StateDir, stateCanariesDir)); err != nil {
		return nil, err
	}
	var workloads []Workload
	for _, k := range slices.Sorted(maps.Keys(d.enrolled)) {
		workloads = append(workloads, d.enrolled[k].Workload)
	}
	// Overrides (canary weights) go into the very first configuration, so a
	// restart never moves traffic.
	objs, err := d.compose(d.base, d.canaries)
	if err != nil {
		return nil, err
	}
	initial, err := objectsYAML(objs)
	if err != nil {
		return nil, err
	}
	serverOpts := make([]Option, 0, len(opts)+3)
	for _, o := range opts {
		serverOpts = append(serverOpts, o)
	}
	serverOpts = append(serverOpts, WithStateDir(cfg.StateDir), WithWorkloads(workloads...), WithConfig(initial))
	srv, err := New(ctx, serverOpts...)
	if err != nil {
		return nil, err
	}
	d.srv, d.logger = srv, srv.logger
	d.appliedAt = time.Now()
	for _, e := range d.enrolled {
		if e.MetricsURL != "" {
			_ = srv.RegisterMetricsEndpoint(e.Workload.Namespace+"/"+e.Workload.Name, e.MetricsURL)
		}
	}
	d.metricsFunc = d.scrapeAll
	d.ctx, d.cancel = context.WithCancel(context.Background())
	if d.api, err = d.serveAPI(ctx); err != nil {
		d.cancel()
		srv.Close()
		return nil, err
	}
	d.mu.Lock()
	d.reconcileAnalysesLocked()
	d.mu.Unlock()
	d.wg.Add(1)
	go d.watch()
	return d, nil
}

// Server is the xDS server the daemon runs.
func (d *Daemon) Server() *Server { return d.srv }

// APIURL is the HTTP API's base URL, e.g. "http://127.0.0.1:15080".
func (d *Daemon) APIURL() string { return d.api.url }

// Close stops the watch, the analyses, the API and the server.
func (d *Daemon) Close() error {
	d.cancel()
	d.api.close()
	d.wg.Wait()
	return d.srv.Close()
}

// watch polls ConfigDir and applies what changed.
func (d *Daemon) watch() {
	defer d.wg.Done()
	t := time.NewTicker(d.cfg.CheckInterval)
	defer t.Stop()
	lastSeen := d.baseHash
	for {
		select {
		case <-d.ctx.Done():
			return
		case <-t.C:
		}
		files, hash, err := readConfigDir(d.cfg.ConfigDir)
		if err == nil && hash == lastSeen {
			continue
		}
		lastSeen = hash
		d.mu.Lock()
		if err == nil {
			err = d.applyFilesLocked(files, hash)
		}
		if err != nil {
			d.configErr = err.Error()
			d.logger.Error("config rejected; keeping last good config", "dir", d.cfg.ConfigDir, "error", err)
		}
		d.mu.Unlock()
	}
}

func (d *Daemon) applyFilesLocked(files []configFile, hash string) error {
	base, specs, err := parseConfigFiles(files)
	if err != nil {
		return err
	}
	if err := d.pushLocked(base, d.canaries); err != nil {
		return err
	}
	d.base, d.baseHash, d.specs, d.configErr = base, hash, specs, ""
	d.logger.Info("config applied", "dir", d.cfg.ConfigDir)
	d.reconcileAnalysesLocked()
	return nil
}

// pushLocked makes base with the canaries' weights the configuration.
func (d *Daemon) pushLocked(base []*object, canaries map[string]*canary) error {
	objs, err := d.compose(base, canaries)
	if err != nil {
		return err
	}
	d.srv.mu.Lock()
	defer d.srv.mu.Unlock()
	if d.srv.closed {
		return ErrClosed
	}
	if err := d.srv.replaceLocked(objs); err != nil {
		return err
	}
	d.appliedAt = time.Now()
	return nil
}

// compose rewrites, in copies of base's VirtualServices, every HTTP route
// whose destinations all go to a canary's host into that canary's weights.
func (d *Daemon) compose(base []*object, canaries map[string]*canary) ([]*object, error) {
	out := slices.Clone(base)
	for _, host := range slices.Sorted(maps.Keys(canaries)) {
		c := canaries[host]
		if len(c.Weights) == 0 {
			continue
		}
		found := false
		for i, o := range out {
			vs, ok := o.spec.(*networking.VirtualService)
			if !ok {
				continue
			}
			var copied *networking.VirtualService
			for ri, r := range vs.GetHttp() {
				if !routesOnlyTo(r.GetRoute(), host, o.key.namespace) {
					continue
				}
				if copied == nil {
					copied = proto.Clone(vs).(*networking.VirtualService)
				}
				copied.Http[ri].Route = weightedRoute(r.GetRoute()[0], c.Weights)
				found = true
			}
			if copied != nil {
				out[i] = &object{key: o.key, spec: copied}
			}
		}
		if !found {
			return nil, fmt.Errorf("canary %s: no VirtualService route sends traffic only to %s", host, host)
		}
	}
	return out, nil
}

func routesOnlyTo(dests []*networking.HTTPRouteDestination, host, namespace string) bool {
	if len(dests) == 0 {
		return false
	}
	for _, d := range dests {
		if QualifyHost(d.GetDestination().GetHost(), namespace) != host {
			return false
		}
	}
	return true
}

// weightedRoute is one destination per subset with a non-zero weight,
// shaped like proto (port, headers).
func weightedRoute(proto0 *networking.HTTPRouteDestination, weights map[string]int) []*networking.HTTPRouteDestination {
	var out []*networking.HTTPRouteDestination
	for _, subset := range slices.Sorted(maps.Keys(weights)) {
		if weights[subset] == 0 {
			continue
		}
		d := proto.Clone(proto0).(*networking.HTTPRouteDestination)
		d.Destination.Subset = subset
		d.Weight = int32(weights[subset])
		out = append(out, d)
	}
	return out
}

// QualifyHost turns a short service name ("payments", "payments.default")
// into the host the configuration routes to
// ("payments.default.svc.cluster.local"), as Istio resolves a
// VirtualService's hosts in its namespace.
func QualifyHost(host, namespace string) string {
	if namespace == "" {
		namespace = "default"
	}
	switch strings.Count(host, ".") {
	case 0:
		return host + "." + namespace + "." + clusterDomain
	case 1:
		return host + "." + clusterDomain
	}
	return host
}

// configFile is one file of ConfigDir.
type configFile struct {
	name string
	data []byte
}

func readConfigDir(dir string) ([]configFile, string, error) {
	if st, err := os.Stat(dir); err == nil && st.Mode().IsRegular() {
		data, err := os.ReadFile(dir)
		if err != nil {
			return nil, "", fmt.Errorf("config file %s: %w", dir, err)
		}
		sum := sha256.Sum256(data)
		return []configFile{{name: dir, data: data}}, hex.EncodeToString(sum[:]), nil
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, "", fmt.Errorf("config dir %s: %w", dir, err)
	}
	h := sha256.New()
	var files []configFile
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() || strings.HasPrefix(name, ".") || !(strings.HasSuffix(name, ".yaml") || strings.HasSuffix(name, ".yml")) {
			continue
		}
		data, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			return nil, "", fmt.Errorf("config file %s: %w", filepath.Join(dir, name), err)
		}
		files = append(files, configFile{name: filepath.Join(dir, name), data: data})
		fmt.Fprintf(h, "%s\x00%d\x00", name, len(data))
		h.Write(data)
	}
	return files, hex.EncodeToString(h.Sum(nil)), nil
}

// parseConfigFiles parses every file, naming the file in errors; Canary
// documents are ours, the rest Istio's.
func parseConfigFiles(files []configFile) ([]*object, map[string]Canary, error) {
	var objs []*object
	seen := map[objectKey]string{}
	specs := map[string]Canary{}
	for _, f := range files {
		istio, canaries, err := splitCanaries(f.data)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", f.name, err)
		}
		parsed, err := parseYAML(istio)
		if err != nil {
			return nil, nil, fmt.Errorf("%s: %w", f.name, err)
		}
		for _, o := range parsed {
			if prev, dup := seen[o.key]; dup {
				return nil, nil, fmt.Errorf("%s: %s: also defined in %s", f.name, o.key, prev)
			}
			seen[o.key] = f.name
			objs = append(objs, o)
		}
		for _, c := range canaries {
			if prev, dup := specs[c.Host]; dup {
				return nil, nil, fmt.Errorf("%s: Canary %s/%s: host %s already has Canary %s/%s", f.name, c.Namespace, c.Name, c.Host, prev.Namespace, prev.Name)
			}
			specs[c.Host] = c
		}
	}
	return objs, specs, nil
}

// Enrollment is a workload enrolled through the API, as recorded in the
// state directory.
//
// # Experimental
type Enrollment struct {
	Workload   Workload  `json:"workload"`
	MetricsURL string    `json:"metrics_url,omitempty"`
	EnrolledAt time.Time `json:"enrolled_at"`
}

// Enroll declares w, records it, registers its metrics URL (if any) and
// returns the files of its bootstrap directory dir, by name: the same
// files WriteBootstrap writes, the bootstrap naming dir's paths.
func (d *Daemon) Enroll(e Enrollment, dir string) (map[string][]byte, error) {
	if err := e.Workload.Validate(); err != nil {
		return nil, err
	}
	if !filepath.IsAbs(dir) {
		return nil, fmt.Errorf("bootstrap dir %q: must be absolute", dir)
	}
	e.Workload = e.Workload.withDefaults()
	key := e.Workload.Namespace + "/" + e.Workload.Name
	if e.MetricsURL != "" {
		if err := d.srv.RegisterMetricsEndpoint(key, e.MetricsURL); err != nil {
			return nil, err
		}
	}
	files, err := d.srv.enrollmentFiles(dir, e.Workload)
	if err != nil {
		return nil, err
	}
	e.EnrolledAt = time.Now().UTC()
	data, err := json.MarshalIndent(e, "", "  ")
	if err != nil {
		return nil, err
	}
	recDir := filepath.Join(d.cfg.StateDir, stateEnrollmentsDir)
	if err := os.MkdirAll(recDir, 0o700); err != nil {
		return nil, fmt.Errorf("enrollment record: %w", err)
	}
	if err := writeFileAtomic(filepath.Join(recDir, e.Workload.Namespace+"~"+e.Workload.Name+".json"), data, 0o600); err != nil {
		return nil, fmt.Errorf("enrollment record: %w", err)
	}
	d.mu.Lock()
	d.enrolled[key] = e
	d.mu.Unlock()
	return files, nil
}

// enrollmentFiles is WriteBootstrap's content, not written.
func (s *Server) enrollmentFiles(dir string, w Workload) (map[string][]byte, error) {
	chain, key, err := s.IssueSVID(w.Namespace, w.ServiceAccount)
	if err != nil {
		return nil, err
	}
	boot, err := s.bootstrapJSON(w, dir, true)
	if err != nil {
		return nil, err
	}
	files := map[string][]byte{KeyFile: key, CertChainFile: chain, RootCertFile: s.RootPEM(), BootstrapFile: boot}
	if !s.plaintext {
		token, err := s.certService.mintEnrollment(w, nodeID(w))
		if err != nil {
			return nil, err
		}
		files[TokenFile] = []byte(token + "\n")
	}
	return files, nil
}

func loadEnrollments(dir string) (map[string]Enrollment, error) {
	out := map[string]Enrollment{}
	err := loadRecords(dir, "enrollment record", func(path string, data []byte) error {
		var rec Enrollment
		if err := json.Unmarshal(data, &rec); err != nil {
			return err
		}
		if err := rec.Workload.Validate(); err != nil {
			return err
		}
		out[rec.Workload.Namespace+"/"+rec.Workload.Name] = rec
		return nil
	})
	return out, err
}

// loadRecords calls load with each *.json file of dir (none if dir does
// not exist), refusing files others may read; errors name what and where.
func loadRecords(dir, what string, load func(path string, data []byte) error) error {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	for _, e := range entries {
		if !strings.HasSuffix(e.Name(), ".json") {
			continue
		}
		path := filepath.Join(dir, e.Name())
		data, err := readSecret(path)
		if err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
		if err := load(path, data); err != nil {
			return fmt.Errorf("%s %s: %w", what, path, err)
		}
	}
	return nil
}

func loadOrCreateToken(path string) (string, error) {
	data, err := readSecret(path)
	if err == nil {
		if t := strings.TrimSpace(string(data)); len(t) >= 32 {
			return t, nil
		}
		return "", fmt.Errorf("api token %s: too short", path)
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("api token: %w", err)
	}
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	t := hex.EncodeToString(b)
	if err := writeFileAtomic(path, []byte(t+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("api token: %w", err)
	}
	return t, nil
}

// objectsYAML writes objs back as YAML documents, for WithConfig.
func objectsYAML(objs []*object) ([]byte, error) {
	var out []byte
	for _, o := range objs {
		_, group := newSpec(o.key.kind)
		spec, err := protojson.Marshal(o.spec)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", o.key, err)
		}
		doc, err := json.Marshal(map[string]any{
			"apiVersion": group + "/v1beta1",
			"kind":       o.key.kind,
			"metadata":   map[string]string{"name": o.key.name, "namespace": o.key.namespace},
			"spec":       json.RawMessage(spec),
		})
		if err != nil {
			return nil, fmt.Errorf("%s: %w", o.key, err)
		}
		out = append(append(out, doc...), "\n---\n"...)
	}
	return out, nil
}
