package telemetry

import (
	"context"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"time"

	lru "github.com/hashicorp/golang-lru/v2"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/noop"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/credentials"

	"mesh/telemetry/internal/histogram"
)

// Names of Istio's standard metrics. With the OpenTelemetry Prometheus
// exporter they come out unchanged: the counter already ends in _total and
// each unit suffix is already part of its name.
const (
	MetricRequestsTotal         = "istio_requests_total"
	MetricRequestDuration       = "istio_request_duration_milliseconds"
	MetricRequestBytes          = "istio_request_bytes"
	MetricResponseBytes         = "istio_response_bytes"
	MetricRequestMessagesTotal  = "istio_request_messages_total"
	MetricResponseMessagesTotal = "istio_response_messages_total"
)

// envoyBuckets are Envoy's default histogram bucket bounds (see
// histogram.EnvoyBuckets).
var envoyBuckets = histogram.EnvoyBuckets

// Label values Istio uses.
const (
	unknown           = "unknown"
	reporterSource    = "source"
	reporterDest      = "destination"
	protocolGRPC      = "grpc"
	protocolHTTP      = "http"
	policyMutualTLS   = "mutual_tls"
	policyNone        = "none"
	noResponseFlags   = "-"
	grpcHTTPStatus    = 200
	noResponseStatus  = 0
	meterInstrumentID = instrumentationName
)

type instruments struct {
	requests         metric.Int64ObservableCounter
	duration         metric.Float64Histogram
	requestBytes     metric.Int64Histogram
	responseBytes    metric.Int64Histogram
	requestMessages  metric.Int64ObservableCounter
	responseMessages metric.Int64ObservableCounter
}

// histogramSink is a meter provider that aggregates Istio's histograms
// itself (telemetry/otelsdk's): then no SDK histogram is created, and each
// measurement is a bucket search and a few atomic operations.
type histogramSink interface {
	MeshHistograms() *histogram.Aggregator
}

// newInstruments creates Istio's instruments. A meter provider may refuse
// one (returning a no-op instrument with the error); the rest still work.
// With a histogram sink, the histograms are no-ops: the sink has them.
func newInstruments(mp metric.MeterProvider, logger *slog.Logger, counts *counters, sink bool) *instruments {
	meter := mp.Meter(meterInstrumentID)
	in := &instruments{}
	var err error
	report := func(name string, err error) {
		if err != nil {
			logger.Warn("telemetry: creating instrument", "instrument", name, "error", err)
		}
	}
	in.requests, err = meter.Int64ObservableCounter(MetricRequestsTotal,
		metric.WithDescription("Requests, by source, destination and outcome (Istio standard metric)."))
	report(MetricRequestsTotal, err)
	histograms := meter
	if sink {
		histograms = noop.Meter{}
	}
	in.duration, err = histograms.Float64Histogram(MetricRequestDuration, metric.WithUnit(histogram.DurationUnit),
		metric.WithDescription(histogram.DurationDescription),
		metric.WithExplicitBucketBoundaries(envoyBuckets...))
	report(MetricRequestDuration, err)
	in.requestBytes, err = histograms.Int64Histogram(MetricRequestBytes, metric.WithUnit(histogram.BytesUnit),
		metric.WithDescription(histogram.RequestBytesDescription),
		metric.WithExplicitBucketBoundaries(envoyBuckets...))
	report(MetricRequestBytes, err)
	in.responseBytes, err = histograms.Int64Histogram(MetricResponseBytes, metric.WithUnit(histogram.BytesUnit),
		metric.WithDescription(histogram.ResponseBytesDescription),
		metric.WithExplicitBucketBoundaries(envoyBuckets...))
	report(MetricResponseBytes, err)
	in.requestMessages, err = meter.Int64ObservableCounter(MetricRequestMessagesTotal,
		metric.WithDescription("gRPC messages the client sent (Istio standard metric)."))
	report(MetricRequestMessagesTotal, err)
	in.responseMessages, err = meter.Int64ObservableCounter(MetricResponseMessagesTotal,
		metric.WithDescription("gRPC messages the server sent (Istio standard metric)."))
	report(MetricResponseMessagesTotal, err)
	report("callback for "+MetricRequestsTotal, registerCounters(meter, in, counts))
	return in
}

func (in *instruments) histogramsEnabled(ctx context.Context) bool {
	return in.duration.Enabled(ctx) || in.requestBytes.Enabled(ctx) || in.responseBytes.Enabled(ctx)
}

// core is what gRPC handlers and HTTP wrappers share: configuration resolved
// once, instruments, and the peer metadata cache.
type core struct {
	client       bool
	tracer       trace.Tracer
	unsampled    *unsampledShortcut
	propagator   propagation.TextMapPropagator
	sendsParent  bool // the propagator writes a parent span ID (B3)
	extraAttrs   []attribute.KeyValue
	instruments  *instruments
	counters     *counters
	histograms   *histogram.Aggregator // nil: the SDK's histograms record
	workload     Workload
	service      string
	peerIdentity func(context.Context) (string, bool)
	peerAuthID   func(credentials.AuthInfo) (string, bool)
	peerAuthMeta func(credentials.AuthInfo) (string, bool)
	metaID       string // this workload's peer metadata headers; "" sends none
	metaValue    string
	peers        peerCache
	labelSets    *lru.Cache[labelKey, *labelSet]
	accessLogger *slog.Logger
	accessLog    AccessLogConfig
	tap          *Tap
	logger       *slog.Logger
	now          func() time.Time
}

func newCore(client bool, opts []Option) *core {
	cfg := newConfig(opts)
	c := &core{
		client:       client,
		tracer:       cfg.tracerProvider.Tracer(instrumentationName),
		propagator:   cfg.propagator,
		extraAttrs:   cfg.attributes,
		workload:     cfg.workload,
		service:      cfg.service,
		peerIdentity: cfg.peerIdentity,
		peerAuthID:   cfg.peerAuthID,
		peerAuthMeta: cfg.peerAuthMeta,
		accessLogger: cfg.accessLogger,
		accessLog:    cfg.accessLog,
		tap:          cfg.tap,
		logger:       cfg.logger,
		now:          cfg.now,
	}
	c.unsampled = newUnsampledShortcut(cfg.tracerProvider, c.tracer)
	c.counters = &counters{}
	if sink, ok := cfg.meterProvider.(histogramSink); ok {
		c.histograms = sink.MeshHistograms()
	}
	c.instruments = newInstruments(cfg.meterProvider, cfg.logger, c.counters, c.histograms != nil)
	c.labelSets, _ = lru.New[labelKey, *labelSet](labelSetCacheSize) // fails only for a size <= 0
	for _, f := range cfg.propagator.Fields() {
		if f == b3ParentSpanID || f == b3Single {
			c.sendsParent = true
		}
	}
	if !cfg.workload.IsZero() {
		id, value, err := PeerMetadata(cfg.workload)
		if err != nil {
			c.logger.Warn("telemetry: not sending peer metadata", "error", err)
		} else {
			c.metaID, c.metaValue = id, value
		}
	}
	if err := cfg.accessLog.Validate(); err != nil {
		c.logger.Warn("telemetry: logging every request", "error", err)
		c.accessLog.SampleRate = 1
	}
	return c
}

// peerFromHeader decodes a peer's metadata header, logging a malformed one
// the first time it is seen.
func (c *core) peerFromHeader(value string) *Workload {
	w, err := c.peers.lookup(value)
	if err != nil {
		c.logger.Debug("telemetry: ignoring peer metadata", "error", err)
	}
	return w
}

// exchange is what one request (one attempt, on a client) revealed, in the
// form both metrics and access logs need. Strings that only an access log
// or a recording span reads (addresses, the trace ID) are kept in their
// raw form and formatted only when needed.
type exchange struct {
	protocol         string // protocolGRPC or protocolHTTP
	httpProtocol     string // "HTTP/2", "HTTP/1.1"
	method           string
	path             string
	authority        string
	peer             *Workload
	peerPrincipal    string
	mutualTLS        bool
	responseCode     int
	grpcStatus       string
	flags            string
	start            time.Time
	duration         time.Duration
	requestBytes     int64
	responseBytes    int64
	requestMessages  int64 // gRPC only
	responseMessages int64
	route            RouteInfo
	remoteAddr       string
	localAddr        string
	remote, local    net.Addr // used when remoteAddr or localAddr is ""
	requestID        string
	spanContext      trace.SpanContext
}

func (ex *exchange) remoteString() string {
	if ex.remoteAddr == "" {
		return addrString(ex.remote)
	}
	return ex.remoteAddr
}

func (ex *exchange) localString() string {
	if ex.localAddr == "" {
		return addrString(ex.local)
	}
	return ex.localAddr
}

func (ex *exchange) traceID() string {
	if ex.spanContext.HasTraceID() {
		return ex.spanContext.TraceID().String()
	}
	return ""
}

// labelSetCacheSize bounds the label sets a handler keeps. A workload's
// series are few (peers x codes x flags); a hostile or very chatty mix
// only costs rebuilding sets, never unbounded memory.
const labelSetCacheSize = 1024

// labelKey is everything that varies between the label sets of one
// handler: the reporter and this workload's own labels are fixed.
type labelKey struct {
	peer          *Workload // the peer cache hands out one pointer per metadata value
	peerPrincipal string
	mutualTLS     bool
	authority     string // the destination service derives from it
	protocol      string
	responseCode  int
	grpcStatus    string
	flags         string
}

// labelSet is one label set ready to record with: the options are built
// once, so recording allocates nothing.
type labelSet struct {
	rec    []metric.RecordOption
	counts *seriesCounts
	hist   *histogram.Series // nil: record through rec
}

func (c *core) labelSet(ex *exchange) *labelSet {
	key := labelKey{
		peer: ex.peer, peerPrincipal: ex.peerPrincipal, mutualTLS: ex.mutualTLS,
		authority: ex.authority, protocol: ex.protocol,
		responseCode: ex.responseCode, grpcStatus: ex.grpcStatus, flags: ex.flags,
	}
	// Peek takes the cache's read lock only: concurrent calls of a hot
	// series do not queue behind each other to bump its recency.
	if ls, ok := c.labelSets.Peek(key); ok {
		return ls
	}
	set := attribute.NewSet(c.labels(ex)...)
	ls := &labelSet{rec: []metric.RecordOption{metric.WithAttributeSet(set)}, counts: c.counters.forSet(set, ex.protocol == protocolGRPC)}
	if c.histograms != nil {
		ls.hist = c.histograms.ForSet(set)
	}
	c.labelSets.Add(key, ls)
	return ls
}

// record turns a finished exchange into metrics and an access log record.
func (c *core) record(ctx context.Context, ex *exchange) {
	if ex.flags == "" {
		ex.flags = noResponseFlags
	}
	// Measurements read their context only for a sampled span to keep as an
	// exemplar; without one, a bare context spares each of them a walk up
	// the request's context chain.
	mctx := ctx
	if !ex.spanContext.IsSampled() {
		mctx = context.Background()
	}
	if in := c.instruments; c.histograms != nil || in.histogramsEnabled(mctx) || c.counters.collected.Load() {
		ls := c.labelSet(ex)
		ls.counts.requests.Add(1)
		ls.counts.reqMsgs.Add(ex.requestMessages)
		ls.counts.respMsgs.Add(ex.responseMessages)
		ms := float64(ex.duration) / float64(time.Millisecond)
		if h := ls.hist; h != nil && ex.spanContext.IsSampled() {
			// Exemplars, as the SDK's trace-based filter keeps them: only
			// sampled calls pay for them.
			now, tid, sid := c.now(), [16]byte(ex.spanContext.TraceID()), [8]byte(ex.spanContext.SpanID())
			h.Duration.RecordExemplar(&histogram.Exemplar[float64]{Value: ms, Time: now, TraceID: tid, SpanID: sid})
			h.RequestBytes.RecordExemplar(&histogram.Exemplar[int64]{Value: ex.requestBytes, Time: now, TraceID: tid, SpanID: sid})
			h.ResponseBytes.RecordExemplar(&histogram.Exemplar[int64]{Value: ex.responseBytes, Time: now, TraceID: tid, SpanID: sid})
		} else if h != nil {
			h.Duration.Record(ms)
			h.RequestBytes.Record(ex.requestBytes)
			h.ResponseBytes.Record(ex.responseBytes)
		} else {
			in.duration.Record(mctx, ms, ls.rec...)
			in.requestBytes.Record(mctx, ex.requestBytes, ls.rec...)
			in.responseBytes.Record(mctx, ex.responseBytes, ls.rec...)
		}
	}
	c.writeAccessLog(ctx, ex)
}

// destinationService returns the host the request addressed.
func (c *core) destinationService(ex *exchange) string {
	if c.service != "" {
		return c.service
	}
	return stripPort(ex.authority)
}

// labels returns Istio's standard label set for ex, in Istio's order.
func (c *core) labels(ex *exchange) []attribute.KeyValue {
	local := &c.workload
	peer := ex.peer
	if peer == nil {
		peer = &Workload{}
	}
	src, dst := local, peer
	srcPrincipal, dstPrincipal := local.Principal, ex.peerPrincipal
	reporter, policy := reporterSource, unknown
	if !c.client {
		src, dst = peer, local
		srcPrincipal, dstPrincipal = ex.peerPrincipal, local.Principal
		reporter, policy = reporterDest, policyNone
		if ex.mutualTLS {
			policy = policyMutualTLS
		}
	}
	service := c.destinationService(ex)
	serviceName, serviceNamespace := splitServiceHost(service)
	if serviceNamespace == "" {
		serviceNamespace = dst.Namespace
	}
	return []attribute.KeyValue{
		attribute.String("reporter", reporter),
		attribute.String("source_workload", orUnknown(src.Name)),
		attribute.String("source_workload_namespace", orUnknown(src.Namespace)),
		attribute.String("source_principal", orUnknown(srcPrincipal)),
		attribute.String("source_app", orUnknown(src.App)),
		attribute.String("source_version", orUnknown(src.Version)),
		attribute.String("source_canonical_service", orUnknown(src.canonicalService())),
		attribute.String("source_canonical_revision", orUnknown(src.canonicalRevision())),
		attribute.String("source_cluster", orUnknown(src.Cluster)),
		attribute.String("destination_workload", orUnknown(dst.Name)),
		attribute.String("destination_workload_namespace", orUnknown(dst.Namespace)),
		attribute.String("destination_principal", orUnknown(dstPrincipal)),
		attribute.String("destination_app", orUnknown(dst.App)),
		attribute.String("destination_version", orUnknown(dst.Version)),
		attribute.String("destination_service", orUnknown(service)),
		attribute.String("destination_service_name", orUnknown(serviceName)),
		attribute.String("destination_service_namespace", orUnknown(serviceNamespace)),
		attribute.String("destination_canonical_service", orUnknown(dst.canonicalService())),
		attribute.String("destination_canonical_revision", orUnknown(dst.canonicalRevision())),
		attribute.String("destination_cluster", orUnknown(dst.Cluster)),
		attribute.String("request_protocol", ex.protocol),
		attribute.String("response_code", strconv.Itoa(ex.responseCode)),
		attribute.String("grpc_response_status", ex.grpcStatus),
		attribute.String("response_flags", ex.flags),
		attribute.String("connection_security_policy", policy),
	}
}

func orUnknown(s string) string {
	if s == "" {
		return unknown
	}
	return s
}

// splitServiceHost returns the service name and namespace of a Kubernetes
// service host ("name.namespace.svc" or longer, as in
// "name.namespace.svc.cluster.local"); any other host is its own name, with
// no namespace.
func splitServiceHost(host string) (name, namespace string) {
	if host == "" {
		return "", ""
	}
	labels := strings.Split(host, ".")
	if len(labels) >= 3 && labels[2] == "svc" {
		return labels[0], labels[1]
	}
	return host, ""
}

// stripPort drops a ":port" from host, keeping IPv6 literals intact.
func stripPort(host string) string {
	if h, _, ok := splitHostPort(host); ok {
		return h
	}
	return host
}
