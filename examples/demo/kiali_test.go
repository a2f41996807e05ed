package main

import (
	"context"
	"fmt"
	"maps"
	"net/url"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"mesh/controlplane"
	"mesh/examples/shop"
)

// Kiali's graph and health, as Kiali v2.30.0 computes them from
// Prometheus: the query text its Istio telemetry vendor and appenders send
// (graph/telemetry/istio/istio.go; appender/response_time.go, throughput.go,
// security_policy.go), its filtering of bad telemetry
// (graph/telemetry/istio/util: IsBadSourceTelemetry, IsBadDestTelemetry,
// HandleDestination), its de-duplication of what both reporters say, and
// its app health (prometheus/metrics.go getItemRequestRates,
// models/health.go, business/health_calculator.go with the default
// tolerances of config.AddHealthDefault). Written here from reading that
// source; the versioned-app graph with service nodes injected, as Kiali's
// UI asks for by default.

// kialiEdgeGroupBy is the group-by of the traffic, throughput and
// response-time queries.
const kialiEdgeGroupBy = "source_cluster,source_workload_namespace,source_workload,source_canonical_service,source_canonical_revision," +
	"destination_cluster,destination_service_namespace,destination_service,destination_service_name,destination_workload_namespace," +
	"destination_workload,destination_canonical_service,destination_canonical_revision"

// kialiSecurityGroupBy is the security-policy appender's group-by.
const kialiSecurityGroupBy = "source_cluster,source_workload_namespace,source_workload,source_canonical_service,source_canonical_revision,source_principal," +
	"destination_cluster,destination_service_namespace,destination_service_name,destination_workload_namespace,destination_workload," +
	"destination_canonical_service,destination_canonical_revision,destination_principal,connection_security_policy"

// kialiTrafficQueries are the request-traffic queries of
// buildNamespaceTrafficMap, in Kiali's order: 0) unserviced incoming
// (source), 2) incoming (destination), 3) outgoing (source). Query 1 is for
// ambient namespaces only.
func kialiTrafficQueries(ns string, seconds int) []string {
	groupBy := kialiEdgeGroupBy + ",request_protocol,response_code,grpc_response_status,response_flags"
	return []string{
		fmt.Sprintf(`sum(rate(istio_requests_total{reporter="source",source_workload_namespace!="%s",destination_workload_namespace="unknown",destination_workload="unknown",destination_service=~"^.+\\.%s\\..+$"} [%ds])) by (%s) > 0`,
			ns, ns, seconds, groupBy),
		fmt.Sprintf(`sum(rate(istio_requests_total{reporter="destination",destination_workload_namespace="%s"} [%ds])) by (%s) > 0`, ns, seconds, groupBy),
		fmt.Sprintf(`sum(rate(istio_requests_total{reporter="source",source_workload_namespace="%s"} [%ds])) by (%s) > 0`, ns, seconds, groupBy),
	}
}

// kialiResponseTimeQueries are the response-time appender's for a
// quantile (the UI's default is the 95th): incoming (destination) first,
// then outgoing (source).
func kialiResponseTimeQueries(ns string, seconds int, quantile float64) []string {
	groupBy := "le," + kialiEdgeGroupBy + ",request_protocol"
	q := func(reporter, selector string) string {
		return fmt.Sprintf(`histogram_quantile(%.2f, sum(rate(istio_request_duration_milliseconds_bucket{reporter="%s",%s}[%ds])) by (%s)) > 0`,
			quantile, reporter, selector, seconds, groupBy)
	}
	return []string{
		q("destination", fmt.Sprintf(`destination_service_namespace="%s"`, ns)),
		q("source", fmt.Sprintf(`source_workload_namespace="%s"`, ns)),
	}
}

// kialiThroughputQueries are the throughput appender's, for "request"
// (istio_request_bytes, source reporter) or "response" (istio_response_bytes,
// destination reporter) throughput.
func kialiThroughputQueries(ns string, seconds int, throughputType string) []string {
	metric := "istio_" + throughputType + "_bytes_sum"
	reporter := "destination"
	if throughputType == "request" {
		reporter = "source"
	}
	return []string{
		fmt.Sprintf(`sum(rate(%s{reporter="%s",source_workload_namespace!="%s",destination_service_namespace="%s"}[%ds])) by (%s) > 0`,
			metric, reporter, ns, ns, seconds, kialiEdgeGroupBy),
		fmt.Sprintf(`sum(rate(%s{reporter="%s",source_workload_namespace="%s"}[%ds])) by (%s) > 0`,
			metric, reporter, ns, seconds, kialiEdgeGroupBy),
	}
}

// kialiSecurityQueries are the security-policy appender's, for request
// traffic: what destinations saw, from outside and from inside ns.
func kialiSecurityQueries(ns string, seconds int) []string {
	return []string{
		fmt.Sprintf(`(sum(rate(istio_requests_total{reporter="destination",source_workload_namespace!="%s",destination_service_namespace="%s"}[%ds])) by (%s) > 0)`,
			ns, ns, seconds, kialiSecurityGroupBy),
		fmt.Sprintf(`(sum(rate(istio_requests_total{reporter="destination",source_workload_namespace="%s"}[%ds])) by (%s) > 0)`,
			ns, seconds, kialiSecurityGroupBy),
	}
}

// kialiAppHealthQueries are getItemRequestRates' for an app (canonical
// service) of a cluster: inbound, then outbound, over rateInterval.
func kialiAppHealthQueries(ns, cluster, app, rateInterval string) (inbound, outbound string) {
	in := fmt.Sprintf(`destination_workload_namespace="%s",destination_canonical_service="%s",destination_cluster="%s"`, ns, app, cluster)
	out := fmt.Sprintf(`source_workload_namespace="%s",source_canonical_service="%s",source_cluster="%s"`, ns, app, cluster)
	q := func(labels string) string {
		return fmt.Sprintf("rate(istio_requests_total{%s}[%s]) > 0", labels, rateInterval)
	}
	return q(in), q(out)
}

// kialiOK is Kiali's graph.IsOK: set, and not "unknown".
func kialiOK(v string) bool { return v != "" && v != "unknown" }

var kialiBadServiceName = regexp.MustCompile(`^\d+\.\d+\.\d+\.\d+(:\d+)?$`)

// kialiEdgeOf applies Kiali's per-series handling to one series: the
// labels every query needs, cluster defaulting, IsBadSourceTelemetry,
// HandleDestination's cluster fix and IsBadDestTelemetry. It returns the
// versioned-app graph's edges the series lands on: source -> service node
// -> destination node when a service node is injected (the last hop is the
// one appenders annotate), or source -> destination. ok is false when Kiali
// would skip the series.
func kialiEdgeOf(m map[string]string, needService bool) (hops []string, ok bool) {
	get := func(k string) (string, bool) { v, ok := m[k]; return v, ok }
	for _, k := range []string{"source_workload_namespace", "source_workload", "source_canonical_service", "source_canonical_revision",
		"destination_service_namespace", "destination_service_name", "destination_workload_namespace", "destination_workload",
		"destination_canonical_service", "destination_canonical_revision"} {
		if _, ok := get(k); !ok {
			return nil, false
		}
	}
	if _, ok := get("destination_service"); !ok && needService {
		return nil, false
	}
	srcCluster, srcClusterOK := get("source_cluster")
	dstCluster, dstClusterOK := get("destination_cluster")
	if !srcClusterOK {
		srcCluster = "unknown"
	}
	if !dstClusterOK {
		dstCluster = "unknown"
	}
	srcNs, srcWl, srcApp, srcVer := m["source_workload_namespace"], m["source_workload"], m["source_canonical_service"], m["source_canonical_revision"]
	// IsBadSourceTelemetry
	if kialiOK(srcNs) && !kialiOK(srcWl) && !kialiOK(srcApp) {
		return nil, false
	}
	if kialiOK(srcNs) && srcClusterOK && !kialiOK(srcCluster) {
		return nil, false
	}
	dstSvcNs, dstSvc, dstSvcName := m["destination_service_namespace"], m["destination_service"], m["destination_service_name"]
	dstWlNs, dstWl, dstApp, dstVer := m["destination_workload_namespace"], m["destination_workload"], m["destination_canonical_service"], m["destination_canonical_revision"]
	// HandleDestination: an unknown destination cluster is taken to be the
	// source's (istio#29373).
	if !kialiOK(dstCluster) && kialiOK(srcCluster) && kialiOK(dstSvcNs) {
		dstCluster = srcCluster
	}
	// IsBadDestTelemetry
	if !kialiOK(dstWl) && kialiOK(dstSvc) && kialiOK(dstSvcName) && dstSvc == dstSvcName && kialiBadServiceName.MatchString(dstSvcName) {
		return nil, false
	}
	if kialiOK(dstSvcNs) && dstClusterOK && !kialiOK(dstCluster) {
		return nil, false
	}
	node := func(cluster, ns, app, ver, wl string) string {
		if kialiOK(app) {
			return cluster + "/" + ns + "/app=" + app + "/" + ver
		}
		return cluster + "/" + ns + "/workload=" + wl
	}
	src := node(srcCluster, srcNs, srcApp, srcVer, srcWl)
	dstNs := dstWlNs
	if !kialiOK(dstNs) {
		dstNs = dstSvcNs
	}
	if !kialiOK(dstApp) && !kialiOK(dstWl) {
		// A service node only: nothing to inject.
		return []string{src, dstCluster + "/" + dstSvcNs + "/service=" + dstSvcName}, true
	}
	dst := node(dstCluster, dstNs, dstApp, dstVer, dstWl)
	if kialiOK(dstSvcName) && dstSvcName != "PassthroughCluster" {
		return []string{src, dstCluster + "/" + dstSvcNs + "/service=" + dstSvcName, dst}, true
	}
	return []string{src, dst}, true
}

// kialiEdgeKey names an edge between two of kialiEdgeOf's nodes.
func kialiEdgeKey(from, to string) string { return from + " -> " + to }

// kialiCode is HandleResponseCode: "-" for no response, the gRPC status
// for gRPC answered over HTTP 2xx-3xx, else the HTTP code.
func kialiCode(m map[string]string) string {
	code := m["response_code"]
	if code == "0" {
		return "-"
	}
	grpcStatus, grpcOK := m["grpc_response_status"]
	httpErr := strings.HasPrefix(code, "4") || strings.HasPrefix(code, "5")
	if m["request_protocol"] != "grpc" || httpErr || !grpcOK {
		return code
	}
	return grpcStatus
}

// kialiTraffic is one graph edge's request traffic: requests per second by
// response code, the protocol, and which queries (reporters) showed it.
type kialiTraffic struct {
	protocol string
	byCode   map[string]float64
	// reporters lists who reported the edge: "destination" (query 2) and
	// "source" (query 3), before de-duplication.
	reporters map[string]bool
}

func (t *kialiTraffic) rate() float64 {
	var sum float64
	for _, v := range t.byCode {
		sum += v
	}
	return sum
}

// errorRate counts what Kiali's default tolerances call errors: HTTP 5xx,
// gRPC statuses 1-16, and no response.
func (t *kialiTraffic) errorRate() float64 {
	var sum float64
	for code, v := range t.byCode {
		if kialiIsError(t.protocol, code) {
			sum += v
		}
	}
	return sum
}

var (
	kialiGRPCError = regexp.MustCompile(`^[1-9]$|^1[0-6]$`)
	kialiHTTP5xx   = regexp.MustCompile(`^5\d\d$`)
)

func kialiIsError(protocol, code string) bool {
	switch {
	case code == "-":
		return true
	case protocol == "grpc":
		return kialiGRPCError.MatchString(code)
	default:
		return kialiHTTP5xx.MatchString(code)
	}
}

// kialiGraph is the versioned-app graph's edges, with what the appenders
// put on them.
type kialiGraph struct {
	traffic      map[string]*kialiTraffic // by edge key
	responseTime map[string]float64       // ms, by edge key
	requestBps   map[string]float64       // request throughput, by edge key
	responseBps  map[string]float64       // response throughput, by edge key
	mtls         map[string]float64       // share of requests over mutual TLS
	principals   map[string][2]string     // source and destination principal
}

// buildKialiGraph runs Kiali's queries for namespace ns over the last
// `seconds` and builds the graph as Kiali would.
func buildKialiGraph(ctx context.Context, base, ns string, seconds int) (*kialiGraph, error) {
	g := &kialiGraph{traffic: map[string]*kialiTraffic{}, responseTime: map[string]float64{}, requestBps: map[string]float64{},
		responseBps: map[string]float64{}, mtls: map[string]float64{}, principals: map[string][2]string{}}
	// Traffic, with Kiali's de-duplication: the first query to apply a
	// series (metric, nodes, code, flags, host) to an edge wins.
	applied := map[string]bool{}
	for i, q := range kialiTrafficQueries(ns, seconds) {
		samples, err := promQuery(ctx, base, q)
		if err != nil {
			return nil, err
		}
		for _, s := range samples {
			hops, ok := kialiEdgeOf(s.Metric, true)
			if !ok {
				continue
			}
			if _, ok := s.Metric["request_protocol"]; !ok {
				continue
			}
			if _, ok := s.Metric["response_code"]; !ok {
				continue
			}
			code := kialiCode(s.Metric)
			hash := strings.Join([]string{hops[0], hops[len(hops)-1], code, s.Metric["response_flags"], s.Metric["destination_service"]}, ":")
			first := !applied[hash]
			applied[hash] = true
			for h := 0; h+1 < len(hops); h++ {
				key := kialiEdgeKey(hops[h], hops[h+1])
				t := g.traffic[key]
				if t == nil {
					t = &kialiTraffic{protocol: s.Metric["request_protocol"], byCode: map[string]float64{}, reporters: map[string]bool{}}
					g.traffic[key] = t
				}
				switch i {
				case 1:
					t.reporters["destination"] = true
				case 2:
					t.reporters["source"] = true
				}
				if first {
					t.byCode[code] += s.Value
				}
			}
		}
	}
	// Response time: on the last hop; the destination's answer comes first
	// and the source's replaces it where both exist, as Kiali's map does.
	for _, q := range kialiResponseTimeQueries(ns, seconds, 0.95) {
		if err := g.annotate(ctx, base, q, g.responseTime, false); err != nil {
			return nil, err
		}
	}
	for _, q := range kialiThroughputQueries(ns, seconds, "request") {
		if err := g.annotate(ctx, base, q, g.requestBps, true); err != nil {
			return nil, err
		}
	}
	for _, q := range kialiThroughputQueries(ns, seconds, "response") {
		if err := g.annotate(ctx, base, q, g.responseBps, true); err != nil {
			return nil, err
		}
	}
	// Security policy: rates by connection_security_policy on every hop.
	policyRates := map[string]map[string]float64{}
	for _, q := range kialiSecurityQueries(ns, seconds) {
		samples, err := promQuery(ctx, base, q)
		if err != nil {
			return nil, err
		}
		for _, s := range samples {
			if _, ok := s.Metric["source_principal"]; !ok {
				continue
			}
			if _, ok := s.Metric["destination_principal"]; !ok {
				continue
			}
			hops, ok := kialiEdgeOf(s.Metric, false)
			if !ok {
				continue
			}
			policy, ok := s.Metric["connection_security_policy"]
			if !ok {
				policy = "unknown"
			}
			for h := 0; h+1 < len(hops); h++ {
				key := kialiEdgeKey(hops[h], hops[h+1])
				if policyRates[key] == nil {
					policyRates[key] = map[string]float64{}
				}
				policyRates[key][policy] += s.Value
				g.principals[key] = [2]string{s.Metric["source_principal"], s.Metric["destination_principal"]}
			}
		}
	}
	for key, rates := range policyRates {
		var total float64
		for _, v := range rates {
			total += v
		}
		if total > 0 {
			g.mtls[key] = rates["mutual_tls"] / total
		}
	}
	return g, nil
}

// annotate runs an appender's query and puts each series' value on its
// last hop (sum: add up; else replace).
func (g *kialiGraph) annotate(ctx context.Context, base, query string, into map[string]float64, sum bool) error {
	samples, err := promQuery(ctx, base, query)
	if err != nil {
		return err
	}
	for _, s := range samples {
		hops, ok := kialiEdgeOf(s.Metric, true)
		if !ok {
			continue
		}
		key := kialiEdgeKey(hops[len(hops)-2], hops[len(hops)-1])
		if sum {
			into[key] += s.Value
		} else {
			into[key] = s.Value
		}
	}
	return nil
}

// kialiHealth is an app's request health: Kiali's status and the error
// ratio (percent) that decided it, and the inbound and outbound rates by
// protocol and code.
type kialiHealth struct {
	status            string
	errorRatio        float64
	inbound, outbound map[string]map[string]float64
}

func (h kialiHealth) String() string {
	return fmt.Sprintf("%s (error ratio %.1f%%, inbound %v, outbound %v)", h.status, h.errorRatio, h.inbound, h.outbound)
}

// kialiAppHealth computes an app's request health as Kiali does: inbound
// rates combined from both reporters (the larger wins per code), outbound
// from the source's, then the default tolerances.
func kialiAppHealth(ctx context.Context, base, ns, cluster, app, rateInterval string) (kialiHealth, error) {
	inQuery, outQuery := kialiAppHealthQueries(ns, cluster, app, rateInterval)
	aggregate := func(query string, keep func(reporter string) bool, into map[string]map[string]map[string]float64) error {
		samples, err := promQuery(ctx, base, query)
		if err != nil {
			return err
		}
		for _, s := range samples {
			reporter := s.Metric["reporter"]
			if !keep(reporter) {
				continue
			}
			code, protocol := s.Metric["response_code"], s.Metric["request_protocol"]
			if code == "0" {
				code = "-"
			} else if grpcStatus, ok := s.Metric["grpc_response_status"]; ok && protocol == "grpc" {
				code = grpcStatus
			}
			if into[reporter] == nil {
				into[reporter] = map[string]map[string]float64{}
			}
			if into[reporter][protocol] == nil {
				into[reporter][protocol] = map[string]float64{}
			}
			into[reporter][protocol][code] += s.Value
		}
		return nil
	}
	in := map[string]map[string]map[string]float64{}
	if err := aggregate(inQuery, func(string) bool { return true }, in); err != nil {
		return kialiHealth{}, err
	}
	out := map[string]map[string]map[string]float64{}
	if err := aggregate(outQuery, func(r string) bool { return r == "source" }, out); err != nil {
		return kialiHealth{}, err
	}
	h := kialiHealth{inbound: map[string]map[string]float64{}, outbound: out["source"]}
	for protocol, codes := range in["source"] {
		h.inbound[protocol] = maps.Clone(codes)
	}
	for protocol, codes := range in["destination"] {
		if h.inbound[protocol] == nil {
			h.inbound[protocol] = map[string]float64{}
		}
		for code, v := range codes {
			if v > h.inbound[protocol][code] {
				h.inbound[protocol][code] = v
			}
		}
	}
	// The default tolerances (code, protocol, degraded %, failure %),
	// compiled as Kiali's health config does: anchored, X in a code a digit.
	anchored := func(p string) *regexp.Regexp {
		if !strings.HasPrefix(p, "^") {
			p = "^" + p
		}
		if !strings.HasSuffix(p, "$") {
			p += "$"
		}
		return regexp.MustCompile(p)
	}
	code := func(p string) *regexp.Regexp { return anchored(strings.NewReplacer("X", `\d`, "x", `\d`).Replace(p)) }
	tolerances := []struct {
		code, protocol    *regexp.Regexp
		degraded, failure float64
	}{
		{code("5XX"), anchored("http"), 0, 10},
		{code("4XX"), anchored("http"), 10, 20},
		{code(`^[1-9]$|^1[0-6]$`), anchored("grpc"), 0, 10},
		{code("^-$"), anchored("http|grpc"), 0, 10},
	}
	priority := map[string]int{"NA": 0, "Healthy": 1, "Degraded": 2, "Failure": 3}
	h.status, h.errorRatio = "NA", -1
	for _, traffic := range []map[string]map[string]float64{h.inbound, h.outbound} {
		for _, protocol := range slices.Sorted(maps.Keys(traffic)) {
			codes := traffic[protocol]
			for _, tol := range tolerances {
				if !tol.protocol.MatchString(protocol) {
					continue
				}
				var errs, total float64
				for code, v := range codes {
					total += v
					if tol.code.MatchString(code) {
						errs += v
					}
				}
				if total == 0 {
					continue
				}
				ratio := errs / total * 100
				status := "Healthy"
				switch {
				case ratio <= 0:
				case ratio >= tol.failure:
					status = "Failure"
				case ratio >= tol.degraded:
					status = "Degraded"
				}
				if priority[status] > priority[h.status] {
					h.status, h.errorRatio = status, ratio
				}
			}
		}
	}
	return h, nil
}

// istioPodLabels are the target labels Istio's Prometheus addon puts on a
// pod's series: its labels through labelmap, namespace and pod.
func istioPodLabels(wl controlplane.Workload) map[string]string {
	labels := map[string]string{
		"namespace": wl.Namespace, "pod": wl.Name + "-5d8f7c9b6-x2x4k",
		"security_istio_io_tlsMode":           "istio",
		"service_istio_io_canonical_name":     wl.Labels["app"],
		"service_istio_io_canonical_revision": wl.Labels["version"],
	}
	for k, v := range wl.Labels {
		labels[k] = v
	}
	return labels
}

// TestKialiQueriesOnRealPrometheus scrapes the demo's workloads with the
// real Prometheus, labelled as Istio's addon labels them, and builds Kiali's
// versioned-app graph and app health from Kiali's own queries and
// filtering. For both canary edges of gRPC (payments) and net/http (web)
// it wants what Kiali draws: traffic reported by both sides, the mTLS lock
// with both principals, a response time, request and response throughput,
// and Degraded health from the share of calls that fail on purpose.
func TestKialiQueriesOnRealPrometheus(t *testing.T) {
	requireTool(t, prometheusBinary, "prometheus")
	// A hang guard only: the loop below ends as soon as Kiali sees it all.
	ctx, cancel := context.WithTimeout(t.Context(), 4*time.Minute)
	defer cancel()
	w := startTraffic(t, ctx)
	workloads := map[string]controlplane.Workload{}
	for _, wl := range append(shop.Workloads(), shop.WebWorkloads()...) {
		workloads[wl.Name] = wl
	}
	var targets []scrapeTarget
	for name, u := range w.metricsURLs() {
		parsed, err := url.Parse(u)
		if err != nil {
			t.Fatal(err)
		}
		targets = append(targets, scrapeTarget{addr: parsed.Host, labels: istioPodLabels(workloads[name])})
	}
	base := startPrometheus(t, ctx, targets)

	const (
		ns, cluster   = "default", controlplane.DefaultClusterID
		graphSeconds  = 60 // Kiali's shortest graph duration
		healthWindow  = "15s"
		checkoutNode  = cluster + "/" + ns + "/app=checkout/v1"
		spiffeDefault = "spiffe://cluster.local/ns/default/sa/"
	)
	check := func() (problems []string) {
		fail := func(format string, args ...any) { problems = append(problems, fmt.Sprintf(format, args...)) }
		g, err := buildKialiGraph(ctx, base, ns, graphSeconds)
		if err != nil {
			t.Fatalf("kiali graph queries: %v", err)
		}
		for _, svc := range []struct{ name, protocol string }{{"payments", "grpc"}, {"web", "http"}} {
			svcNode := cluster + "/" + ns + "/service=" + svc.name
			in := kialiEdgeKey(checkoutNode, svcNode)
			if tr := g.traffic[in]; tr == nil || tr.rate() == 0 || tr.protocol != svc.protocol {
				fail("no %s traffic on %s: %+v", svc.protocol, in, tr)
			}
			for _, v := range []string{"v1", "v2"} {
				edge := kialiEdgeKey(svcNode, cluster+"/"+ns+"/app="+svc.name+"/"+v)
				tr := g.traffic[edge]
				if tr == nil {
					fail("no edge %s", edge)
					continue
				}
				if !tr.reporters["source"] || !tr.reporters["destination"] {
					fail("%s: reported by %v, want source and destination", edge, tr.reporters)
				}
				// One call in 2*flakyEvery fails on purpose: about 5%.
				if ratio := tr.errorRate() / tr.rate(); tr.protocol != svc.protocol || tr.rate() == 0 || ratio <= 0 || ratio >= 0.1 {
					fail("%s: %s %.1f rps, error ratio %.3f; want %s traffic with about 5%% errors", edge, tr.protocol, tr.rate(), ratio, svc.protocol)
				}
				if g.mtls[edge] != 1 || g.mtls[in] != 1 {
					fail("%s: mutual TLS share %v (and %v from checkout), want 1: the lock", edge, g.mtls[edge], g.mtls[in])
				}
				if p := g.principals[edge]; p != [2]string{spiffeDefault + "checkout", spiffeDefault + svc.name} {
					fail("%s: principals %q", edge, p)
				}
				if g.responseTime[edge] <= 0 {
					fail("%s: no response time", edge)
				}
				if g.requestBps[edge] <= 0 || g.responseBps[edge] <= 0 {
					fail("%s: throughput request %v B/s, response %v B/s; want both", edge, g.requestBps[edge], g.responseBps[edge])
				}
			}
		}
		// Every series names both clusters: Kiali drops the others.
		unknown, err := promQuery(ctx, base, `istio_requests_total{source_cluster="unknown"} or istio_requests_total{destination_cluster="unknown"}`)
		if err != nil {
			t.Fatalf("prometheus: %v", err)
		}
		if len(unknown) > 0 {
			fail("%d series with an unknown cluster, e.g. %v", len(unknown), unknown[0].Metric)
		}
		for _, app := range []string{"payments", "web", "checkout"} {
			h, err := kialiAppHealth(ctx, base, ns, cluster, app, healthWindow)
			if err != nil {
				t.Fatalf("kiali health queries: %v", err)
			}
			if h.status != "Degraded" || h.errorRatio <= 0 || h.errorRatio >= 10 {
				fail("app %s health: %v; want Degraded at about 5%%", app, h)
			}
		}
		return problems
	}
	for {
		problems := check()
		if len(problems) == 0 {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("Kiali would not draw the mesh:\n%s", strings.Join(problems, "\n"))
		case <-time.After(time.Second):
		}
	}
	g, _ := buildKialiGraph(ctx, base, ns, graphSeconds)
	for _, key := range slices.Sorted(maps.Keys(g.traffic)) {
		tr := g.traffic[key]
		t.Logf("%s: %s %.1f rps (errors %.2f), mTLS %.0f%%, %.1f ms p95, request %.0f B/s, response %.0f B/s",
			key, tr.protocol, tr.rate(), tr.errorRate(), 100*g.mtls[key], g.responseTime[key], g.requestBps[key], g.responseBps[key])
	}
}
