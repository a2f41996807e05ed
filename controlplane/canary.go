package controlplane

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	dto "github.com/prometheus/client_model/go"
	networking "istio.io/api/networking/v1alpha3"
	"sigs.k8s.io/yaml"
)

// KindCanary is mesh's own kind beside Istio's: automated canary analysis
// of one host.
//
//	apiVersion: mesh/v1alpha1
//	kind: Canary
//	metadata: {name: payments, namespace: default}
//	spec:
//	  host: payments            # short or full name of the routed host
//	  stable: v1                # subsets of its DestinationRule
//	  canary: v2
//	  steps: [10, 25, 50, 100]  # canary weight per interval
//	  interval: 1m
//	  minSuccessRate: 0.99      # of the canary's calls, per interval
//	  maxP99: 500ms             # of the canary's calls, per interval
//	  minRequests: 20           # fewer in an interval: wait, do not step
//
// Each interval, the canary's calls in that interval (Istio's metrics as
// the canary's workloads report them, reporter="destination") either pass
// the thresholds, and the weight steps forward, or breach one, and the
// canary's weight goes to 0 and the analysis stops, the reason recorded.
const (
	KindCanary       = "Canary"
	CanaryAPIVersion = "mesh/v1alpha1"
)

// Phases of a canary analysis.
const (
	PhaseProgressing = "Progressing"
	PhaseSucceeded   = "Succeeded"
	PhaseRolledBack  = "RolledBack"
	PhaseStopped     = "Stopped"
)

// Canary is a canary analysis spec.
//
// # Experimental
type Canary struct {
	Name           string        `json:"name,omitempty"`
	Namespace      string        `json:"namespace,omitempty"`
	Host           string        `json:"host"`
	Stable         string        `json:"stable"`
	Canary         string        `json:"canary"`
	Steps          []int         `json:"steps"`
	Interval       time.Duration `json:"interval"`
	MinSuccessRate float64       `json:"min_success_rate"`
	MaxP99         time.Duration `json:"max_p99,omitempty"`
	MinRequests    int           `json:"min_requests"`
}

// Validate reports the first problem, naming the field.
func (c Canary) Validate() error {
	switch {
	case c.Host == "":
		return errors.New("spec.host: required")
	case c.Stable == "" || c.Canary == "":
		return errors.New("spec.stable and spec.canary: both required (subset names)")
	case c.Stable == c.Canary:
		return fmt.Errorf("spec.canary %q: same subset as spec.stable", c.Canary)
	case len(c.Steps) == 0:
		return errors.New("spec.steps: required, e.g. [10, 25, 50, 100]")
	case c.Interval <= 0:
		return errors.New("spec.interval: required, e.g. 1m")
	case c.MinSuccessRate < 0 || c.MinSuccessRate > 1:
		return fmt.Errorf("spec.minSuccessRate %v: want a fraction in [0, 1]", c.MinSuccessRate)
	case c.MaxP99 < 0:
		return fmt.Errorf("spec.maxP99 %v: negative", c.MaxP99)
	case c.MinRequests < 0:
		return fmt.Errorf("spec.minRequests %d: negative", c.MinRequests)
	}
	for i, s := range c.Steps {
		if s < 1 || s > 100 {
			return fmt.Errorf("spec.steps[%d] %d: want 1..100", i, s)
		}
		if i > 0 && s <= c.Steps[i-1] {
			return fmt.Errorf("spec.steps[%d] %d: steps must increase", i, s)
		}
	}
	return nil
}

func (c Canary) hash() string {
	b, _ := json.Marshal(c)
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:8])
}

type canaryDoc struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name      string `json:"name"`
		Namespace string `json:"namespace"`
	} `json:"metadata"`
	Spec struct {
		Host           string   `json:"host"`
		Stable         string   `json:"stable"`
		Canary         string   `json:"canary"`
		Steps          []int    `json:"steps"`
		Interval       string   `json:"interval"`
		MinSuccessRate *float64 `json:"minSuccessRate"`
		MaxP99         string   `json:"maxP99"`
		MinRequests    *int     `json:"minRequests"`
	} `json:"spec"`
}

// splitCanaries takes the Canary documents out of multi-document YAML,
// returning the rest unchanged in document order (empty documents kept,
// so Istio errors' document numbers stay those of the file).
func splitCanaries(data []byte) ([]byte, []Canary, error) {
	docs := documentSeparator.Split(string(data), -1)
	var rest []string
	var out []Canary
	for i, doc := range docs {
		var hdr struct {
			Kind string `json:"kind"`
		}
		if err := yaml.Unmarshal([]byte(doc), &hdr); err != nil || hdr.Kind != KindCanary {
			rest = append(rest, doc)
			continue
		}
		rest = append(rest, "")
		c, err := parseCanary([]byte(doc))
		if err != nil {
			return nil, nil, fmt.Errorf("document %d: %w", i, err)
		}
		out = append(out, c)
	}
	return []byte(strings.Join(rest, "\n---\n")), out, nil
}

func parseCanary(doc []byte) (Canary, error) {
	var d canaryDoc
	if err := yaml.UnmarshalStrict(doc, &d); err != nil {
		return Canary{}, fmt.Errorf("Canary: %w", err)
	}
	c := Canary{Name: d.Metadata.Name, Namespace: cmpOr(d.Metadata.Namespace, "default"),
		Stable: d.Spec.Stable, Canary: d.Spec.Canary, Steps: d.Spec.Steps, MinSuccessRate: 0.99, MinRequests: 10}
	where := fmt.Sprintf("Canary %s/%s", c.Namespace, c.Name)
	if d.APIVersion != CanaryAPIVersion {
		return Canary{}, fmt.Errorf("%s: apiVersion %q: want %s", where, d.APIVersion, CanaryAPIVersion)
	}
	if c.Name == "" {
		return Canary{}, fmt.Errorf("%s: metadata.name: required", where)
	}
	if d.Spec.Host != "" {
		c.Host = QualifyHost(d.Spec.Host, c.Namespace)
	}
	var err error
	if d.Spec.Interval != "" {
		if c.Interval, err = time.ParseDuration(d.Spec.Interval); err != nil {
			return Canary{}, fmt.Errorf("%s: spec.interval: %w", where, err)
		}
	}
	if d.Spec.MaxP99 != "" {
		if c.MaxP99, err = time.ParseDuration(d.Spec.MaxP99); err != nil {
			return Canary{}, fmt.Errorf("%s: spec.maxP99: %w", where, err)
		}
	}
	if d.Spec.MinSuccessRate != nil {
		c.MinSuccessRate = *d.Spec.MinSuccessRate
	}
	if d.Spec.MinRequests != nil {
		c.MinRequests = *d.Spec.MinRequests
	}
	if err := c.Validate(); err != nil {
		return Canary{}, fmt.Errorf("%s: %w", where, err)
	}
	return c, nil
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// CanaryStatus is a host's canary state: the weights the daemon holds its
// routes at and the analysis, if any. It is what the state directory keeps.
//
// # Experimental
type CanaryStatus struct {
	Host     string          `json:"host"`
	Weights  map[string]int  `json:"weights,omitempty"`
	Analysis *AnalysisStatus `json:"analysis,omitempty"`
}

// AnalysisStatus is where an automated analysis stands.
type AnalysisStatus struct {
	Spec     Canary `json:"spec"`
	FromFile bool   `json:"from_file,omitempty"`
	// Step indexes Spec.Steps: the weight in force.
	Step    int             `json:"step"`
	Phase   string          `json:"phase"`
	Reason  string          `json:"reason,omitempty"`
	History []AnalysisEvent `json:"history"`
}

// AnalysisEvent is one interval's verdict.
type AnalysisEvent struct {
	Time        time.Time `json:"time"`
	Weight      int       `json:"weight"` // canary weight during the interval
	Requests    float64   `json:"requests"`
	SuccessRate float64   `json:"success_rate"`
	P99Millis   float64   `json:"p99_ms"`
	Verdict     string    `json:"verdict"` // "step", "wait", "rollback", "done"
	Message     string    `json:"message"`
}

type canary = CanaryStatus

func loadCanaries(dir string) (map[string]*canary, error) {
	out := map[string]*canary{}
	err := loadRecords(dir, "canary state", func(_ string, data []byte) error {
		c := new(canary)
		if err := json.Unmarshal(data, c); err != nil {
			return err
		}
		out[c.Host] = c
		return nil
	})
	return out, err
}

func (d *Daemon) saveCanary(c *canary) error {
	dir := filepath.Join(d.cfg.StateDir, stateCanariesDir)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("canary state: %w", err)
	}
	data, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(dir, c.Host+".json"), data, 0o600)
}

// commitCanaryLocked pushes the configuration with c in force and records
// c; on error nothing changes.
func (d *Daemon) commitCanaryLocked(c *canary) error {
	next := make(map[string]*canary, len(d.canaries)+1)
	for h, v := range d.canaries {
		next[h] = v
	}
	next[c.Host] = c
	if err := d.pushLocked(d.base, next); err != nil {
		return err
	}
	if err := d.saveCanary(c); err != nil {
		// In force but not recorded: say so, a restart would move traffic.
		d.logger.Error("canary state not saved", "host", c.Host, "error", err)
		return err
	}
	d.canaries = next
	return nil
}

// CanaryStatus returns host's canary state (host short or full).
func (d *Daemon) CanaryStatus(host string) (CanaryStatus, error) {
	host = QualifyHost(host, "")
	d.mu.Lock()
	defer d.mu.Unlock()
	weights, err := d.weightsInForceLocked(host)
	if err != nil {
		return CanaryStatus{}, err
	}
	st := CanaryStatus{Host: host, Weights: weights}
	if c := d.canaries[host]; c != nil && c.Analysis != nil {
		a := *c.Analysis
		a.History = slices.Clone(a.History)
		st.Analysis = &a
	}
	return st, nil
}

// weightsInForceLocked reads host's split from the configuration served.
func (d *Daemon) weightsInForceLocked(host string) (map[string]int, error) {
	d.srv.mu.Lock()
	defer d.srv.mu.Unlock()
	for _, o := range d.srv.cfg.sorted(KindVirtualService) {
		for _, r := range o.spec.(*networking.VirtualService).GetHttp() {
			if !routesOnlyTo(r.GetRoute(), host, o.key.namespace) {
				continue
			}
			w := map[string]int{}
			for _, dst := range r.GetRoute() {
				weight := int(dst.GetWeight())
				if len(r.GetRoute()) == 1 && weight == 0 {
					weight = 100
				}
				w[cmpOr(dst.GetDestination().GetSubset(), "(all)")] += weight
			}
			return w, nil
		}
	}
	return nil, fmt.Errorf("host %s: no VirtualService route sends traffic only to it", host)
}

// SetWeights holds host's routes at weights (subset -> percent, summing
// to 100), stopping any analysis of host.
func (d *Daemon) SetWeights(host string, weights map[string]int) error {
	host = QualifyHost(host, "")
	sum := 0
	for s, w := range weights {
		if w < 0 || w > 100 {
			return fmt.Errorf("weight of %s: %d: want 0..100", s, w)
		}
		sum += w
	}
	if sum != 100 {
		return fmt.Errorf("weights sum to %d: want 100", sum)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	c := d.canaryCopyLocked(host)
	c.Weights = weights
	if c.Analysis != nil && c.Analysis.Phase == PhaseProgressing {
		c.Analysis.Phase, c.Analysis.Reason = PhaseStopped, "weights set by hand"
	}
	if err := d.commitCanaryLocked(c); err != nil {
		return err
	}
	d.stopAnalysisLocked(host)
	return nil
}

// Release drops what the daemon holds host's routes at (weights and any
// analysis, from memory and the state dir), so the config dir's weights
// rule again.
func (d *Daemon) Release(host string) error {
	host = QualifyHost(host, "")
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.canaries[host]; !ok {
		return fmt.Errorf("host %s: no canary weights held", host)
	}
	next := maps.Clone(d.canaries)
	delete(next, host)
	if err := d.pushLocked(d.base, next); err != nil {
		return err
	}
	d.stopAnalysisLocked(host)
	d.canaries = next
	if err := os.Remove(filepath.Join(d.cfg.StateDir, stateCanariesDir, host+".json")); err != nil && !os.IsNotExist(err) {
		return fmt.Errorf("canary state: %w", err)
	}
	return nil
}

// Promote sends all of host's traffic to subset, or to the analysis's
// canary when subset is empty; Rollback to its stable subset.
func (d *Daemon) Promote(host, subset string) error { return d.moveAll(host, subset, true) }

// Rollback sends all of host's traffic to subset, or to the analysis's
// stable subset when subset is empty.
func (d *Daemon) Rollback(host, subset string) error { return d.moveAll(host, subset, false) }

func (d *Daemon) moveAll(host, subset string, promote bool) error {
	h := QualifyHost(host, "")
	if subset == "" {
		d.mu.Lock()
		spec, ok := d.specs[h]
		if c := d.canaries[h]; c != nil && c.Analysis != nil {
			spec, ok = c.Analysis.Spec, true
		}
		d.mu.Unlock()
		if !ok {
			return fmt.Errorf("host %s has no canary spec: name the subset, e.g. %s v2", h, host)
		}
		subset = spec.Stable
		if promote {
			subset = spec.Canary
		}
	}
	return d.SetWeights(h, map[string]int{subset: 100})
}

// StartAnalysis starts (or restarts from its first step) an analysis of
// spec.Host.
func (d *Daemon) StartAnalysis(ctx context.Context, spec Canary) error {
	spec.Host = QualifyHost(spec.Host, spec.Namespace)
	if err := spec.Validate(); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.startAnalysisLocked(spec, false)
}

func (d *Daemon) canaryCopyLocked(host string) *canary {
	c := &canary{Host: host}
	if old := d.canaries[host]; old != nil {
		*c = *old
		if old.Analysis != nil {
			a := *old.Analysis
			a.History = slices.Clone(a.History)
			c.Analysis = &a
		}
	}
	return c
}

func (d *Daemon) startAnalysisLocked(spec Canary, fromFile bool) error {
	c := d.canaryCopyLocked(spec.Host)
	w := spec.Steps[0]
	c.Weights = map[string]int{spec.Stable: 100 - w, spec.Canary: w}
	c.Analysis = &AnalysisStatus{Spec: spec, FromFile: fromFile, Phase: PhaseProgressing, History: []AnalysisEvent{}}
	if err := d.commitCanaryLocked(c); err != nil {
		return err
	}
	d.stopAnalysisLocked(spec.Host)
	d.logger.Info("canary analysis started", "host", spec.Host, "canary", spec.Canary, "weight", w)
	d.runAnalysisLocked(spec.Host)
	return nil
}

// reconcileAnalysesLocked starts the analyses ConfigDir asks for and
// resumes the recorded ones still progressing.
func (d *Daemon) reconcileAnalysesLocked() {
	for host, spec := range d.specs {
		c := d.canaries[host]
		if c != nil && c.Analysis != nil && c.Analysis.Spec.hash() == spec.hash() {
			continue
		}
		if err := d.startAnalysisLocked(spec, true); err != nil {
			d.logger.Error("canary analysis not started", "host", host, "error", err)
			d.configErr = fmt.Sprintf("Canary %s/%s: %v", spec.Namespace, spec.Name, err)
		}
	}
	for host, c := range d.canaries {
		a := c.Analysis
		if a == nil || a.Phase != PhaseProgressing {
			continue
		}
		if _, inFile := d.specs[host]; a.FromFile && !inFile {
			c = d.canaryCopyLocked(host)
			c.Analysis.Phase, c.Analysis.Reason = PhaseStopped, "Canary removed from the config dir"
			if err := d.commitCanaryLocked(c); err != nil {
				d.logger.Error("canary state", "host", host, "error", err)
			}
			d.stopAnalysisLocked(host)
			continue
		}
		if _, running := d.analyses[host]; !running {
			d.runAnalysisLocked(host)
		}
	}
}

func (d *Daemon) stopAnalysisLocked(host string) {
	if stop, ok := d.analyses[host]; ok {
		stop()
		delete(d.analyses, host)
	}
}

// runAnalysisLocked starts host's analysis loop from a fresh baseline.
func (d *Daemon) runAnalysisLocked(host string) {
	spec := d.canaries[host].Analysis.Spec
	ctx, stop := context.WithCancel(d.ctx)
	d.analyses[host] = stop
	d.baselines[host] = d.metricsFunc(ctx)
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		t := time.NewTicker(spec.Interval)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
			if _, done := d.AnalyzeNow(ctx, host); done {
				return
			}
		}
	}()
}

// AnalyzeNow ends host's current interval at once: it judges the
// canary's calls since the interval began and steps, rolls back or waits.
// It returns the interval's verdict and whether the analysis is over.
// The analysis loop calls it every interval; tests and operators may too.
func (d *Daemon) AnalyzeNow(ctx context.Context, host string) (AnalysisEvent, bool) {
	host = QualifyHost(host, "")
	d.analysisMu.Lock()
	defer d.analysisMu.Unlock()
	d.mu.Lock()
	c := d.canaries[host]
	if c == nil || c.Analysis == nil || c.Analysis.Phase != PhaseProgressing {
		d.mu.Unlock()
		return AnalysisEvent{Verdict: "none", Message: "no analysis in progress"}, true
	}
	spec := c.Analysis.Spec
	version := d.subsetVersionLocked(host, spec.Canary)
	base := d.baselines[host]
	d.mu.Unlock()

	cur := d.metricsFunc(ctx)
	win := windowOf(base, cur, host, version)

	d.mu.Lock()
	defer d.mu.Unlock()
	c = d.canaryCopyLocked(host)
	a := c.Analysis
	if a == nil || a.Phase != PhaseProgressing || a.Spec.hash() != spec.hash() {
		return AnalysisEvent{Verdict: "none", Message: "analysis changed meanwhile"}, true
	}
	ev := AnalysisEvent{Time: time.Now().UTC(), Weight: spec.Steps[a.Step], Requests: win.requests}
	p99 := 0.0
	if win.requests > 0 {
		ev.SuccessRate = 1 - win.errors/win.requests
		p99 = win.p99()
		ev.P99Millis = p99
		if math.IsInf(p99, 1) {
			ev.P99Millis = -1 // beyond the histogram's last bound; JSON has no Inf
		}
	}
	var breach string
	switch {
	case win.requests < float64(max(spec.MinRequests, 1)):
		ev.Verdict = "wait"
		ev.Message = fmt.Sprintf("%.0f requests to %s in the interval, want at least %d", win.requests, spec.Canary, max(spec.MinRequests, 1))
	case ev.SuccessRate < spec.MinSuccessRate:
		breach = fmt.Sprintf("success rate %.4f below %.4f (%.0f of %.0f calls failed)", ev.SuccessRate, spec.MinSuccessRate, win.errors, win.requests)
	case spec.MaxP99 > 0 && p99 > float64(spec.MaxP99)/float64(time.Millisecond):
		breach = fmt.Sprintf("p99 %.0fms above %v", p99, spec.MaxP99)
	}
	done := false
	switch {
	case ev.Verdict == "wait":
	case breach != "":
		ev.Verdict, ev.Message = "rollback", breach
		c.Weights = map[string]int{spec.Stable: 100, spec.Canary: 0}
		a.Phase, a.Reason = PhaseRolledBack, fmt.Sprintf("at %d%%: %s", spec.Steps[a.Step], breach)
		done = true
	case a.Step == len(spec.Steps)-1:
		ev.Verdict, ev.Message = "done", fmt.Sprintf("passed at %d%%", spec.Steps[a.Step])
		a.Phase = PhaseSucceeded
		done = true
	default:
		a.Step++
		w := spec.Steps[a.Step]
		c.Weights = map[string]int{spec.Stable: 100 - w, spec.Canary: w}
		ev.Verdict, ev.Message = "step", fmt.Sprintf("passed at %d%%; now %d%%", spec.Steps[a.Step-1], w)
	}
	a.History = append(a.History, ev)
	if err := d.commitCanaryLocked(c); err != nil {
		// Not in force: the same interval is judged again next time.
		d.logger.Error("canary step not applied", "host", host, "error", err)
		return AnalysisEvent{Verdict: "error", Message: err.Error()}, false
	}
	d.baselines[host] = cur
	d.logger.Info("canary analysis", "host", host, "verdict", ev.Verdict, "message", ev.Message)
	if done {
		if stop, ok := d.analyses[host]; ok {
			stop()
			delete(d.analyses, host)
		}
	}
	return ev, done
}

// subsetVersionLocked is the "version" label of host's subset, which
// Istio's metrics report as destination_version.
func (d *Daemon) subsetVersionLocked(host, subset string) string {
	for _, o := range d.base {
		dr, ok := o.spec.(*networking.DestinationRule)
		if !ok || QualifyHost(dr.GetHost(), o.key.namespace) != host {
			continue
		}
		for _, s := range dr.GetSubsets() {
			if s.GetName() == subset && s.GetLabels()["version"] != "" {
				return s.GetLabels()["version"]
			}
		}
	}
	return subset
}

// metricsSample is one scrape of one workload's /metrics: the canary's
// series summed by "host|version".
type metricsSample struct {
	target string
	series map[string]edgeAgg
}

// scrapeAll reads every registered /metrics URL, summing the
// destination-reported series by destination host and version.
func (d *Daemon) scrapeAll(ctx context.Context) []metricsSample {
	var out []metricsSample
	for url, fams := range d.scrape(ctx) {
		out = append(out, metricsSample{target: url, series: sumSeries(fams, func(l map[string]string) (string, bool) {
			return l["destination_service"] + "|" + l["destination_version"], l["reporter"] == "destination"
		})})
	}
	return out
}

// callFailed follows Istio's labels: gRPC calls fail with a non-OK
// grpc_response_status, HTTP ones with a 5xx response_code.
func callFailed(labels map[string]string) bool {
	if s := labels["grpc_response_status"]; labels["request_protocol"] == "grpc" {
		return s != "" && s != "0"
	}
	return strings.HasPrefix(labels["response_code"], "5")
}

// window is the canary's calls between two samples.
type window struct {
	requests, errors float64
	buckets          map[float64]float64
}

func windowOf(base, cur []metricsSample, host, version string) window {
	key := host + "|" + version
	prev := map[string]edgeAgg{}
	for _, s := range base {
		prev[s.target] = s.series[key]
	}
	w := window{buckets: map[float64]float64{}}
	for _, s := range cur {
		now, was := s.series[key], prev[s.target]
		if now.requests < was.requests || now.buckets[math.Inf(1)] < was.buckets[math.Inf(1)] {
			was = edgeAgg{} // the workload restarted: its counters too
		}
		w.requests += now.requests - was.requests
		w.errors += max(now.errors-was.errors, 0)
		for ub, n := range now.buckets {
			w.buckets[ub] += n - was.buckets[ub]
		}
	}
	return w
}

// p99 is the upper bound of the bucket holding the 99th percentile call
// (Inf when beyond the last finite bound), as Prometheus'
// histogram_quantile would bound it.
func (w window) p99() float64 { return quantileBound(w.buckets, 0.99) }

// quantileBound is the upper bound of the bucket of cumulative counts
// (upper bound -> count, +Inf holding the total) where quantile q falls.
func quantileBound(buckets map[float64]float64, q float64) float64 {
	bounds := make([]float64, 0, len(buckets))
	for ub := range buckets {
		bounds = append(bounds, ub)
	}
	sort.Float64s(bounds)
	total := buckets[math.Inf(1)]
	if total <= 0 {
		return 0
	}
	for _, ub := range bounds {
		if buckets[ub] >= q*total {
			return ub
		}
	}
	return math.Inf(1)
}

func labelMap(m *dto.Metric) map[string]string {
	out := make(map[string]string, len(m.GetLabel()))
	for _, l := range m.GetLabel() {
		out[l.GetName()] = l.GetValue()
	}
	return out
}
