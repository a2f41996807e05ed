package admin

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// Kiali's default request-health thresholds: an edge with at least
// DegradedErrorRatio errors is drawn orange, with at least FailureErrorRatio
// red, otherwise green.
const (
	DegradedErrorRatio = 0.001
	FailureErrorRatio  = 0.20
)

// Edge health, as the graph colours it.
const (
	HealthHealthy  = "healthy"
	HealthDegraded = "degraded"
	HealthFailure  = "failure"
	// HealthIdle: no request since the previous scrape.
	HealthIdle = "idle"
)

// requestsMetric is the Istio counter the graph is built from, and
// durationMetric the histogram its p99 comes from.
const (
	requestsMetric = "istio_requests_total"
	durationMetric = "istio_request_duration_milliseconds"
)

// maxScrapeBytes bounds one /metrics body: a workload's Istio series are a
// few hundred kilobytes at most.
const maxScrapeBytes = 32 << 20

// A GraphSource computes the current service graph.
type GraphSource interface {
	Graph(ctx context.Context) (Graph, error)
}

// Graph is the service graph: versioned services and the traffic between
// them.
type Graph struct {
	Nodes []Node `json:"nodes"`
	Edges []Edge `json:"edges"`
	// Errors lists the targets that could not be scraped or parsed; the
	// graph holds what the others reported.
	Errors      []string  `json:"errors,omitempty"`
	GeneratedAt time.Time `json:"generated_at"`
}

// Node is one version of one service.
type Node struct {
	// ID is "namespace/service/version".
	ID        string `json:"id"`
	Namespace string `json:"namespace"`
	Service   string `json:"service"`
	Version   string `json:"version"`
}

// Edge is the traffic from one node to another.
type Edge struct {
	// ID is "<source ID>-><target ID>".
	ID       string `json:"id"`
	Source   string `json:"source"`
	Target   string `json:"target"`
	Protocol string `json:"protocol"`
	// Requests and Errors are the counters' totals; Rate (requests per
	// second) and ErrorRatio cover the time since the previous scrape, or
	// the totals on the first scrape (when Rate is 0).
	Requests   float64 `json:"requests"`
	Errors     float64 `json:"errors"`
	Rate       float64 `json:"rate"`
	ErrorRatio float64 `json:"error_ratio"`
	// MutualTLS is set when the destination reported mutual_tls for every
	// request it counted; MTLSRatio is the share it did. On a graph without
	// the destination's series (a caller's own), they come from the
	// source's: a request whose both principals are SPIFFE IDs was made over
	// a handshake where each side proved one, which is mutual TLS.
	MutualTLS bool    `json:"mutual_tls"`
	MTLSRatio float64 `json:"mtls_ratio"`
	Health    string  `json:"health"`
	// P99Millis is the upper bound (ms) of the duration histogram bucket
	// holding the 99th percentile over the same span as Rate: 0 without
	// duration series, -1 beyond the last finite bound.
	P99Millis float64 `json:"p99_ms"`
	// Weight is the percent of the source's calls to the target's service
	// that the routes in force send to this version, when the graph's
	// source knows the routes (the control plane's does); nil otherwise.
	Weight *int `json:"weight,omitempty"`
}

// Edge returns the edge from source to target node IDs, if any.
func (g Graph) Edge(source, target string) (Edge, bool) {
	for _, e := range g.Edges {
		if e.Source == source && e.Target == target {
			return e, true
		}
	}
	return Edge{}, false
}

// NodeID names a node: "namespace/service/version".
func NodeID(namespace, service, version string) string {
	return namespace + "/" + service + "/" + version
}

// ScraperOption configures a Scraper.
type ScraperOption interface{ apply(*Scraper) }

type scraperOptionFunc func(*Scraper)

func (f scraperOptionFunc) apply(s *Scraper) { f(s) }

// WithHTTPClient sets the client used to scrape (default: one with a 5 s
// timeout).
func WithHTTPClient(c *http.Client) ScraperOption {
	return scraperOptionFunc(func(s *Scraper) {
		if c != nil {
			s.client = c
		}
	})
}

// WithClock replaces time.Now, for rates in tests. A fake clock does not
// advance while the Scraper waits, so the first graph then shows totals
// only, without the first-view wait (see Scraper.Graph).
func WithClock(now func() time.Time) ScraperOption {
	return scraperOptionFunc(func(s *Scraper) {
		if now != nil {
			s.now, s.fakeClock = now, true
		}
	})
}

// WithRateWindow sets the shortest time a rate is computed over (default
// 1 s): a graph asked for sooner after the previous one measures from an
// older scrape, so frequent polling does not turn a few requests into a
// noisy error ratio.
func WithRateWindow(d time.Duration) ScraperOption {
	return scraperOptionFunc(func(s *Scraper) {
		if d > 0 {
			s.window = d
		}
	})
}

// WithLogger sets the logger for scrape failures (default: discard).
func WithLogger(l *slog.Logger) ScraperOption {
	return scraperOptionFunc(func(s *Scraper) {
		if l != nil {
			s.logger = l
		}
	})
}

// Scraper is a GraphSource that scrapes Prometheus text endpoints on every
// call. It starts no goroutine; it keeps the previous totals to compute
// rates.
type Scraper struct {
	targets func() []string
	client  *http.Client
	now     func() time.Time
	logger  *slog.Logger
	window  time.Duration
	// fakeClock: no real window can pass on s.now, so the first graph
	// does not wait for one.
	fakeClock bool

	mu      sync.Mutex
	history []snapshot // oldest first
}

// snapshot is one scrape's totals, by edge ID.
type snapshot struct {
	at     time.Time
	counts map[string]edgeCounts
}

// maxHistory bounds the snapshots kept when graphs are asked for faster
// than the rate window.
const maxHistory = 64

// NewScraper returns a Scraper of the /metrics URLs targets returns.
func NewScraper(targets func() []string, opts ...ScraperOption) *Scraper {
	s := &Scraper{
		targets: targets,
		// Its own transport, so CloseIdleConnections leaves nothing behind.
		client: &http.Client{Timeout: 5 * time.Second, Transport: http.DefaultTransport.(*http.Transport).Clone()},
		now:    time.Now,
		logger: slog.New(slog.DiscardHandler),
		window: time.Second,
	}
	for _, o := range opts {
		o.apply(s)
	}
	return s
}

// CloseIdleConnections closes the scraper's idle keep-alive connections
// to its targets. Call it when done with the Scraper.
func (s *Scraper) CloseIdleConnections() { s.client.CloseIdleConnections() }

// Graph scrapes every target and builds the graph. A target that fails is
// listed in Graph.Errors; Graph fails only when ctx does.
//
// The first graph a Scraper builds scrapes twice, a rate window apart, so
// that its first view already shows rates and a p99 over that window
// rather than totals and "0 rps".
func (s *Scraper) Graph(ctx context.Context) (Graph, error) {
	s.mu.Lock()
	first := len(s.history) == 0 && !s.fakeClock
	s.mu.Unlock()
	if first {
		if _, err := s.graphOnce(ctx); err != nil {
			return Graph{}, err
		}
		t := time.NewTimer(s.window)
		defer t.Stop()
		select {
		case <-ctx.Done():
			return Graph{}, fmt.Errorf("graph: waiting for the first rate window: %w", ctx.Err())
		case <-t.C:
		}
	}
	return s.graphOnce(ctx)
}

func (s *Scraper) graphOnce(ctx context.Context) (Graph, error) {
	var targets []string
	if s.targets != nil {
		targets = s.targets()
	}
	var families []map[string]*dto.MetricFamily
	var failures []string
	for _, url := range targets {
		fams, err := s.scrape(ctx, url)
		if err != nil {
			if ctx.Err() != nil {
				return Graph{}, fmt.Errorf("scraping %s: %w", url, ctx.Err())
			}
			s.logger.Warn("admin: scraping metrics", "url", url, "error", err)
			failures = append(failures, err.Error())
			continue
		}
		families = append(families, fams)
	}
	counts := countEdges(families...)
	now := s.now()

	s.mu.Lock()
	defer s.mu.Unlock()
	// Measure from the newest scrape at least a window old; with none, the
	// graph shows totals only.
	base := -1
	for i, snap := range s.history {
		if now.Sub(snap.at) >= s.window {
			base = i
		}
	}
	var g Graph
	if base >= 0 {
		g = buildGraph(counts, s.history[base].counts, now.Sub(s.history[base].at))
		s.history = s.history[base:]
	} else {
		g = buildGraph(counts, nil, 0)
	}
	s.history = append(s.history, snapshot{at: now, counts: counts})
	if len(s.history) > maxHistory {
		s.history = slices.Delete(s.history, 0, len(s.history)-maxHistory)
	}
	g.Errors = failures
	g.GeneratedAt = now
	return g, nil
}

func (s *Scraper) scrape(ctx context.Context, url string) (map[string]*dto.MetricFamily, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, fmt.Errorf("scraping %q: %w", url, err)
	}
	// Ask for the text format: that is what we parse.
	req.Header.Set("Accept", "text/plain;version=0.0.4")
	resp, err := s.client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("scraping %s: %w", url, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("scraping %s: status %s", url, resp.Status)
	}
	fams, err := ParseMetrics(io.LimitReader(resp.Body, maxScrapeBytes))
	if err != nil {
		return nil, fmt.Errorf("scraping %s: %w", url, err)
	}
	return fams, nil
}

// ParseMetrics parses the Prometheus text exposition format.
func ParseMetrics(r io.Reader) (map[string]*dto.MetricFamily, error) {
	parser := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := parser.TextToMetricFamilies(r)
	if err != nil {
		return nil, fmt.Errorf("parsing prometheus text: %w", err)
	}
	return fams, nil
}

// GraphFromMetrics builds a graph from parsed metric families of one or
// more workloads, without rates.
func GraphFromMetrics(families ...map[string]*dto.MetricFamily) Graph {
	return buildGraph(countEdges(families...), nil, 0)
}

// edgeCounts sums one edge's series, per reporter.
type edgeCounts struct {
	source, target Node
	protocol       string
	// Source-reported and destination-reported requests and errors.
	srcRequests, srcErrors float64
	dstRequests, dstErrors float64
	dstMTLS                float64
	srcMTLS                float64 // source-reported, both principals proven
	// Cumulative duration buckets (upper bound in ms -> count; +Inf holds
	// the total), per reporter.
	srcBuckets, dstBuckets map[float64]float64
}

// requests and errors prefer the source's view, as Kiali's versioned-app
// graph does; a destination-only edge (the caller is outside the mesh)
// uses the destination's.
func (c edgeCounts) requests() (total, errs float64) {
	if c.srcRequests > 0 {
		return c.srcRequests, c.srcErrors
	}
	return c.dstRequests, c.dstErrors
}

// edgeNodes names a series' source and destination nodes.
func edgeNodes(labels map[string]string) (src, dst Node) {
	src = Node{
		Namespace: orUnknown(labels["source_workload_namespace"]),
		Service:   orUnknown(first(labels["source_canonical_service"], labels["source_app"], labels["source_workload"])),
		Version:   orUnknown(first(labels["source_canonical_revision"], labels["source_version"])),
	}
	dst = Node{
		Namespace: orUnknown(first(labels["destination_service_namespace"], labels["destination_workload_namespace"])),
		Service:   orUnknown(first(labels["destination_canonical_service"], labels["destination_app"], labels["destination_service_name"])),
		Version:   orUnknown(first(labels["destination_canonical_revision"], labels["destination_version"])),
	}
	src.ID = NodeID(src.Namespace, src.Service, src.Version)
	dst.ID = NodeID(dst.Namespace, dst.Service, dst.Version)
	return src, dst
}

func labelsOf(m *dto.Metric) map[string]string {
	labels := make(map[string]string, len(m.GetLabel()))
	for _, l := range m.GetLabel() {
		labels[l.GetName()] = l.GetValue()
	}
	return labels
}

func countEdges(families ...map[string]*dto.MetricFamily) map[string]edgeCounts {
	counts := map[string]edgeCounts{}
	for _, fams := range families {
		fam := fams[requestsMetric]
		if fam == nil {
			continue
		}
		for _, m := range fam.GetMetric() {
			var value float64
			switch {
			case m.GetCounter() != nil:
				value = m.GetCounter().GetValue()
			case m.GetUntyped() != nil:
				value = m.GetUntyped().GetValue()
			default:
				continue
			}
			labels := labelsOf(m)
			src, dst := edgeNodes(labels)
			id := src.ID + "->" + dst.ID
			c, ok := counts[id]
			if !ok {
				c = edgeCounts{source: src, target: dst, protocol: labels["request_protocol"]}
			}
			failed := isError(labels)
			switch labels["reporter"] {
			case "source":
				c.srcRequests += value
				if failed {
					c.srcErrors += value
				}
				// Istio's source reporter says connection_security_policy
				// "unknown"; the principals it verified say more.
				if isSPIFFE(labels["source_principal"]) && isSPIFFE(labels["destination_principal"]) {
					c.srcMTLS += value
				}
			case "destination":
				c.dstRequests += value
				if failed {
					c.dstErrors += value
				}
				if labels["connection_security_policy"] == "mutual_tls" {
					c.dstMTLS += value
				}
			default:
				continue
			}
			counts[id] = c
		}
	}
	addDurations(counts, families)
	return counts
}

// addDurations adds each counted edge's duration histogram, per reporter.
func addDurations(counts map[string]edgeCounts, families []map[string]*dto.MetricFamily) {
	for _, fams := range families {
		fam := fams[durationMetric]
		if fam == nil {
			continue
		}
		for _, m := range fam.GetMetric() {
			h := m.GetHistogram()
			if h == nil {
				continue
			}
			labels := labelsOf(m)
			src, dst := edgeNodes(labels)
			c, ok := counts[src.ID+"->"+dst.ID]
			if !ok {
				continue
			}
			var b *map[float64]float64
			switch labels["reporter"] {
			case "source":
				b = &c.srcBuckets
			case "destination":
				b = &c.dstBuckets
			default:
				continue
			}
			if *b == nil {
				*b = map[float64]float64{}
			}
			for _, bk := range h.GetBucket() {
				(*b)[bk.GetUpperBound()] += float64(bk.GetCumulativeCount())
			}
			if !slices.ContainsFunc(h.GetBucket(), func(bk *dto.Bucket) bool { return math.IsInf(bk.GetUpperBound(), 1) }) {
				(*b)[math.Inf(1)] += float64(h.GetSampleCount())
			}
			counts[src.ID+"->"+dst.ID] = c
		}
	}
}

// buckets is the duration histogram of the reporter requests() uses, or
// the other's when that one reported none.
func (c edgeCounts) buckets() map[float64]float64 {
	if c.srcRequests > 0 && c.srcBuckets != nil || c.dstBuckets == nil {
		return c.srcBuckets
	}
	return c.dstBuckets
}

// p99 is the upper bound of the bucket holding the 99th percentile of
// cur minus prev (cumulative counts by upper bound, +Inf the total): 0
// with no calls, -1 beyond the last finite bound.
func p99(cur, prev map[float64]float64) float64 {
	total := cur[math.Inf(1)] - prev[math.Inf(1)]
	if total <= 0 {
		return 0
	}
	bounds := slices.Sorted(maps.Keys(cur))
	for _, ub := range bounds {
		if cur[ub]-prev[ub] >= 0.99*total {
			if math.IsInf(ub, 1) {
				return -1
			}
			return ub
		}
	}
	return -1
}

// isError follows Istio's labels: gRPC calls fail with a non-OK
// grpc_response_status (their response_code is 200), HTTP ones with 5xx.
func isError(labels map[string]string) bool {
	if labels["request_protocol"] == "grpc" {
		status := labels["grpc_response_status"]
		return status != "" && status != "0"
	}
	code, err := strconv.Atoi(labels["response_code"])
	return err == nil && code >= 500
}

func buildGraph(counts, prev map[string]edgeCounts, elapsed time.Duration) Graph {
	g := Graph{Nodes: []Node{}, Edges: []Edge{}}
	nodes := map[string]Node{}
	for id, c := range counts {
		nodes[c.source.ID] = c.source
		nodes[c.target.ID] = c.target
		total, errs := c.requests()
		e := Edge{ID: id, Source: c.source.ID, Target: c.target.ID, Protocol: c.protocol, Requests: total, Errors: errs}
		windowTotal, windowErrs := total, errs
		var prevBuckets map[float64]float64
		if prev != nil && elapsed > 0 {
			// An edge missing from the base scrape is new: count from zero.
			pt, pe := prev[id].requests()
			// A counter that went down was reset (the workload restarted):
			// count from zero.
			if total >= pt {
				windowTotal, windowErrs = total-pt, max(errs-pe, 0)
				prevBuckets = prev[id].buckets()
			}
			e.Rate = windowTotal / elapsed.Seconds()
		}
		if cur := c.buckets(); cur != nil && cur[math.Inf(1)] >= prevBuckets[math.Inf(1)] {
			e.P99Millis = p99(cur, prevBuckets)
		}
		if windowTotal > 0 {
			e.ErrorRatio = windowErrs / windowTotal
		}
		switch {
		case c.dstRequests > 0:
			e.MTLSRatio = c.dstMTLS / c.dstRequests
			e.MutualTLS = c.dstMTLS == c.dstRequests
		case c.srcRequests > 0:
			e.MTLSRatio = c.srcMTLS / c.srcRequests
			e.MutualTLS = c.srcMTLS == c.srcRequests
		}
		e.Health = health(windowTotal, e.ErrorRatio)
		g.Edges = append(g.Edges, e)
	}
	for _, n := range nodes {
		g.Nodes = append(g.Nodes, n)
	}
	slices.SortFunc(g.Nodes, func(a, b Node) int { return strings.Compare(a.ID, b.ID) })
	slices.SortFunc(g.Edges, func(a, b Edge) int { return strings.Compare(a.ID, b.ID) })
	return g
}

func health(requests, errorRatio float64) string {
	switch {
	case requests == 0:
		return HealthIdle
	case errorRatio >= FailureErrorRatio:
		return HealthFailure
	case errorRatio >= DegradedErrorRatio:
		return HealthDegraded
	default:
		return HealthHealthy
	}
}

func isSPIFFE(principal string) bool { return strings.HasPrefix(principal, "spiffe://") }

func first(values ...string) string {
	for _, v := range values {
		if v != "" && v != "unknown" {
			return v
		}
	}
	return ""
}

func orUnknown(v string) string {
	if v == "" {
		return "unknown"
	}
	return v
}

// errNotConfigured is served for a page whose source the Config left nil.
var errNotConfigured = errors.New("not configured")
