package controlplane

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"slices"
	"strings"
	"time"

	dto "github.com/prometheus/client_model/go"

	"mesh/internal/admin"
)

// EdgeStats is the traffic of one edge of the mesh over a window, from the
// destination's Istio metrics (reporter="destination").
//
// # Experimental
type EdgeStats struct {
	Source      string  `json:"source"`      // namespace/service/version of the caller
	Destination string  `json:"destination"` // namespace/service/version of the callee
	Requests    float64 `json:"requests"`
	RPS         float64 `json:"rps"`
	SuccessRate float64 `json:"success_rate"`
	// P50Millis and P99Millis are the upper bounds of the histogram
	// buckets holding them; -1 when beyond the last bound.
	P50Millis float64 `json:"p50_ms"`
	P99Millis float64 `json:"p99_ms"`
	// MutualTLS is set when every call in the window came over mTLS.
	MutualTLS bool `json:"mutual_tls"`
}

type edgeAgg struct {
	requests, errors, mtls float64
	buckets                map[float64]float64
}

// Top scrapes every registered /metrics URL twice, window apart, and
// returns each edge's traffic in between, busiest first.
func (d *Daemon) Top(ctx context.Context, window time.Duration) ([]EdgeStats, error) {
	if window <= 0 || window > 10*time.Minute {
		return nil, fmt.Errorf("window %v: want (0, 10m]", window)
	}
	first := d.scrapeEdges(ctx)
	t := time.NewTimer(window)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-t.C:
	}
	second := d.scrapeEdges(ctx)
	var out []EdgeStats
	for target, edges := range second {
		for id, now := range edges {
			was := first[target][id]
			if now.requests < was.requests {
				was = edgeAgg{} // the workload restarted
			}
			n := now.requests - was.requests
			if n <= 0 {
				continue
			}
			src, dst, _ := strings.Cut(id, "->")
			e := EdgeStats{Source: src, Destination: dst, Requests: n, RPS: n / window.Seconds(),
				SuccessRate: 1 - max(now.errors-was.errors, 0)/n, MutualTLS: now.mtls-was.mtls >= n}
			b := map[float64]float64{}
			for ub, c := range now.buckets {
				b[ub] = c - was.buckets[ub]
			}
			e.P50Millis, e.P99Millis = finiteOr(quantileBound(b, 0.5)), finiteOr(quantileBound(b, 0.99))
			out = append(out, e)
		}
	}
	slices.SortFunc(out, func(a, b EdgeStats) int {
		if a.Requests != b.Requests {
			return int(math.Copysign(1, b.Requests-a.Requests))
		}
		return strings.Compare(a.Source+a.Destination, b.Source+b.Destination)
	})
	return out, nil
}

func finiteOr(v float64) float64 {
	if math.IsInf(v, 0) {
		return -1
	}
	return v
}

// scrape reads every registered /metrics URL; a target that fails is
// logged and left out.
func (d *Daemon) scrape(ctx context.Context) map[string]map[string]*dto.MetricFamily {
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	out := map[string]map[string]*dto.MetricFamily{}
	for _, url := range d.srv.metricsURLs() {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			continue
		}
		resp, err := client.Do(req)
		if err != nil {
			d.logger.Warn("metrics scrape failed", "url", url, "error", err)
			continue
		}
		fams, err := admin.ParseMetrics(resp.Body)
		resp.Body.Close()
		if err != nil {
			d.logger.Warn("metrics unparsable", "url", url, "error", err)
			continue
		}
		out[url] = fams
	}
	return out
}

// scrapeEdges sums every target's destination-reported series by edge.
func (d *Daemon) scrapeEdges(ctx context.Context) map[string]map[string]edgeAgg {
	out := map[string]map[string]edgeAgg{}
	for url, fams := range d.scrape(ctx) {
		out[url] = sumSeries(fams, edgeID)
	}
	return out
}

// edgeID names a destination-reported series' edge "src->dst", each
// "namespace/service/version".
func edgeID(l map[string]string) (string, bool) {
	or := func(v string) string { return cmpOr(v, "unknown") }
	src := or(l["source_workload_namespace"]) + "/" + or(cmpOr(l["source_canonical_service"], l["source_workload"])) + "/" + or(cmpOr(l["source_canonical_revision"], l["source_version"]))
	dst := or(l["destination_service_namespace"]) + "/" + or(cmpOr(l["destination_canonical_service"], l["destination_service_name"])) + "/" + or(cmpOr(l["destination_canonical_revision"], l["destination_version"]))
	return src + "->" + dst, l["reporter"] == "destination"
}

// sumSeries sums Istio's request counter and duration histogram by key,
// over the series key accepts.
func sumSeries(fams map[string]*dto.MetricFamily, key func(labels map[string]string) (string, bool)) map[string]edgeAgg {
	out := map[string]edgeAgg{}
	if fam := fams["istio_requests_total"]; fam != nil {
		for _, m := range fam.GetMetric() {
			l := labelMap(m)
			id, ok := key(l)
			if !ok {
				continue
			}
			v := m.GetCounter().GetValue() + m.GetUntyped().GetValue()
			a := out[id]
			a.requests += v
			if callFailed(l) {
				a.errors += v
			}
			if l["connection_security_policy"] == "mutual_tls" {
				a.mtls += v
			}
			out[id] = a
		}
	}
	if fam := fams["istio_request_duration_milliseconds"]; fam != nil {
		for _, m := range fam.GetMetric() {
			id, ok := key(labelMap(m))
			if !ok || m.GetHistogram() == nil {
				continue
			}
			a := out[id]
			if a.buckets == nil {
				a.buckets = map[float64]float64{}
			}
			hasInf := false
			for _, b := range m.GetHistogram().GetBucket() {
				a.buckets[b.GetUpperBound()] += float64(b.GetCumulativeCount())
				hasInf = hasInf || math.IsInf(b.GetUpperBound(), 1)
			}
			// The text format lists the +Inf bucket, which holds the
			// count; a histogram without it still has its count.
			if !hasInf {
				a.buckets[math.Inf(1)] += float64(m.GetHistogram().GetSampleCount())
			}
			out[id] = a
		}
	}
	return out
}
