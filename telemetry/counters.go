package telemetry

import (
	"context"
	"sync"
	"sync/atomic"
	"weak"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// Istio's counters (requests, request and response messages) are counted
// here, in one atomic per series, and handed to the meter provider when it
// collects, through observable counters. A synchronous measurement costs
// the OpenTelemetry SDK a walk over every one of the 25 labels, each time;
// counted here, a request costs three atomic adds, and the walk happens
// once per series per collection. The histograms are measured as they
// happen: the API offers no observable histogram.

// maxCountedSeries bounds the series a handler counts. Beyond it, counts go
// to one series labelled otel.metric.overflow="true", as the SDK's own
// cardinality limit does, so a flood of peer labels cannot grow memory.
const maxCountedSeries = 4096

var overflowSet = attribute.NewSet(attribute.Bool("otel.metric.overflow", true))

// seriesCounts is one series' counters.
type seriesCounts struct {
	opt      metric.ObserveOption
	grpc     bool // message counts are reported for gRPC only, as Istio does
	requests atomic.Int64
	reqMsgs  atomic.Int64
	respMsgs atomic.Int64
}

// counters holds a handler's series. Series are never dropped: a counter
// that vanished and came back would read as a reset.
type counters struct {
	mu       sync.Mutex
	series   map[attribute.Distinct]*seriesCounts
	overflow *seriesCounts
	// collected is set once the meter provider first collected: until
	// then, with every histogram disabled too, nobody may be listening.
	collected atomic.Bool
}

// forSet returns the counters of set's series, creating them.
func (c *counters) forSet(set attribute.Set, grpc bool) *seriesCounts {
	c.mu.Lock()
	defer c.mu.Unlock()
	if s, ok := c.series[set.Equivalent()]; ok {
		return s
	}
	if len(c.series) >= maxCountedSeries {
		if c.overflow == nil {
			c.overflow = &seriesCounts{opt: metric.WithAttributeSet(overflowSet), grpc: true}
		}
		return c.overflow
	}
	if c.series == nil {
		c.series = make(map[attribute.Distinct]*seriesCounts)
	}
	s := &seriesCounts{opt: metric.WithAttributeSet(set), grpc: grpc}
	c.series[set.Equivalent()] = s
	return s
}

// observe reports every series to o.
func (c *counters) observe(o metric.Observer, in *instruments) {
	c.collected.Store(true)
	c.mu.Lock()
	all := make([]*seriesCounts, 0, len(c.series)+1)
	for _, s := range c.series {
		all = append(all, s)
	}
	if c.overflow != nil {
		all = append(all, c.overflow)
	}
	c.mu.Unlock()
	for _, s := range all {
		o.ObserveInt64(in.requests, s.requests.Load(), s.opt)
		if s.grpc {
			o.ObserveInt64(in.requestMessages, s.reqMsgs.Load(), s.opt)
			o.ObserveInt64(in.responseMessages, s.respMsgs.Load(), s.opt)
		}
	}
}

// registerCounters asks meter to collect c. The callback holds c weakly:
// a handler nobody uses any more is collected by the garbage collector,
// and its callback then reports nothing.
func registerCounters(meter metric.Meter, in *instruments, c *counters) error {
	w := weak.Make(c)
	_, err := meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		if c := w.Value(); c != nil {
			c.observe(o, in)
		}
		return nil
	}, in.requests, in.requestMessages, in.responseMessages)
	return err
}
