// Package histogram aggregates Istio's three histograms (request duration,
// request and response size) in mesh's own atomics: fixed Envoy buckets,
// one series per label set, recorded with a bucket search and a few atomic
// operations. The OpenTelemetry SDK's synchronous histograms walk all 25
// of Istio's labels on every measurement, which cost more than everything
// else telemetry does per call; telemetry/otelsdk hands these series to an
// SDK reader as a metric producer instead.
package histogram

import (
	"math"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
)

// EnvoyBuckets are Envoy's default histogram bucket bounds, which Istio's
// sidecars use for every one of its histograms, durations and sizes alike:
// dashboards and quantile queries then read proxy and proxyless series the
// same way.
var EnvoyBuckets = []float64{0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000, 1800000, 3600000}

// Descriptions and units of the three histograms, shared by the SDK
// instruments and the producer so both describe them alike.
const (
	DurationDescription      = "Request duration (Istio standard metric)."
	DurationUnit             = "ms"
	RequestBytesDescription  = "Request size: headers and body as on the wire, uncompressed headers (Istio standard metric)."
	ResponseBytesDescription = "Response size: headers, body and trailers as on the wire, uncompressed headers (Istio standard metric)."
	BytesUnit                = "By"
)

// maxSeries bounds the series an aggregator keeps. Beyond it, measurements
// go to one series labelled otel.metric.overflow="true", as the SDK's own
// cardinality limit does.
const maxSeries = 4096

var overflowSet = attribute.NewSet(attribute.Bool("otel.metric.overflow", true))

// Series is one label set's three histograms.
type Series struct {
	Attributes    attribute.Set
	Start         time.Time
	Duration      Histogram[float64] // milliseconds
	RequestBytes  Histogram[int64]
	ResponseBytes Histogram[int64]
}

// Aggregator holds the series of every handler that records into it.
// Series are never dropped: a cumulative histogram that vanished and came
// back would read as a reset.
type Aggregator struct {
	mu       sync.Mutex
	series   map[attribute.Distinct]*Series
	order    []*Series // creation order, for a stable output
	overflow *Series
}

// New returns an empty aggregator.
func New() *Aggregator { return &Aggregator{series: make(map[attribute.Distinct]*Series)} }

// ForSet returns set's series, creating it.
func (a *Aggregator) ForSet(set attribute.Set) *Series {
	a.mu.Lock()
	defer a.mu.Unlock()
	if s, ok := a.series[set.Equivalent()]; ok {
		return s
	}
	if len(a.series) >= maxSeries {
		if a.overflow == nil {
			a.overflow = newSeries(overflowSet)
			a.order = append(a.order, a.overflow)
		}
		return a.overflow
	}
	s := newSeries(set)
	a.series[set.Equivalent()] = s
	a.order = append(a.order, s)
	return s
}

// All returns every series, in creation order.
func (a *Aggregator) All() []*Series {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]*Series(nil), a.order...)
}

func newSeries(set attribute.Set) *Series {
	s := &Series{Attributes: set, Start: time.Now()}
	s.Duration.init()
	s.RequestBytes.init()
	s.ResponseBytes.init()
	return s
}

// Histogram is a cumulative explicit-bucket histogram over EnvoyBuckets,
// safe for concurrent use without locks. A bucket holds the values up to
// and including its upper bound, as the SDK's do.
type Histogram[N int64 | float64] struct {
	counts [20]atomic.Uint64 // len(EnvoyBuckets)+1
	// sum, min and max hold N's bits: math.Float64bits for float64, the
	// two's complement for int64.
	sum, min, max atomic.Uint64
	// exemplars holds each bucket's latest measurement made under a
	// sampled span, as the SDK's trace-based exemplar filter keeps one
	// per bucket.
	exemplars [20]atomic.Pointer[Exemplar[N]]
}

// Exemplar is a measurement made under a sampled span.
type Exemplar[N int64 | float64] struct {
	Value   N
	Time    time.Time
	TraceID [16]byte
	SpanID  [8]byte
}

func (h *Histogram[N]) init() {
	h.min.Store(toBits(maxOf[N]()))
	h.max.Store(toBits(-maxOf[N]()))
}

// RecordExemplar adds one measurement made under a sampled span, and keeps
// it as its bucket's exemplar.
func (h *Histogram[N]) RecordExemplar(e *Exemplar[N]) {
	h.exemplars[bucket(float64(e.Value))].Store(e)
	h.Record(e.Value)
}

// Record adds one measurement.
func (h *Histogram[N]) Record(v N) {
	h.counts[bucket(float64(v))].Add(1)
	for {
		old := h.sum.Load()
		if h.sum.CompareAndSwap(old, toBits(fromBits[N](old)+v)) {
			break
		}
	}
	for {
		old := h.min.Load()
		if fromBits[N](old) <= v || h.min.CompareAndSwap(old, toBits(v)) {
			break
		}
	}
	for {
		old := h.max.Load()
		if fromBits[N](old) >= v || h.max.CompareAndSwap(old, toBits(v)) {
			break
		}
	}
}

// Snapshot is a histogram's state at one moment. Count is the sum of the
// bucket counts, so the two always agree; a measurement under way may show
// in the buckets before it shows in Sum.
type Snapshot[N int64 | float64] struct {
	Counts        []uint64
	Count         uint64
	Sum, Min, Max N
	Exemplars     []*Exemplar[N] // by bucket; none when no span was sampled
}

// Snapshot reads the histogram.
func (h *Histogram[N]) Snapshot() Snapshot[N] {
	s := Snapshot[N]{Counts: make([]uint64, len(h.counts))}
	for i := range h.counts {
		s.Counts[i] = h.counts[i].Load()
		s.Count += s.Counts[i]
		if e := h.exemplars[i].Load(); e != nil {
			s.Exemplars = append(s.Exemplars, e)
		}
	}
	s.Sum, s.Min, s.Max = fromBits[N](h.sum.Load()), fromBits[N](h.min.Load()), fromBits[N](h.max.Load())
	return s
}

// bucket returns the index of the bucket v falls in: the first bound not
// below v, or the overflow bucket.
func bucket(v float64) int {
	lo, hi := 0, len(EnvoyBuckets)
	for lo < hi {
		m := int(uint(lo+hi) >> 1)
		if EnvoyBuckets[m] < v {
			lo = m + 1
		} else {
			hi = m
		}
	}
	return lo
}

func toBits[N int64 | float64](v N) uint64 {
	switch x := any(v).(type) {
	case float64:
		return math.Float64bits(x)
	case int64:
		return uint64(x)
	}
	return 0
}

func fromBits[N int64 | float64](b uint64) N {
	var zero N
	switch any(zero).(type) {
	case float64:
		return N(math.Float64frombits(b))
	}
	return N(int64(b))
}

func maxOf[N int64 | float64]() N {
	var zero N
	switch any(zero).(type) {
	case float64:
		return N(math.Inf(1))
	}
	return N(math.MaxInt64)
}
