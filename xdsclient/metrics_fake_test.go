package xdsclient_test

import (
	"context"
	"sync"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/metric/embedded"
	"go.opentelemetry.io/otel/metric/noop"
)

// recordingMeterProvider is a minimal in-memory metrics SDK. The module's
// go.mod does not require go.opentelemetry.io/otel/sdk/metric (and this
// package may not add it), so the test records through the metric API
// itself: counters sum per attribute set; collect runs the registered
// callbacks the way a reader's Collect does.
type recordingMeterProvider struct {
	noop.MeterProvider
	mu        sync.Mutex
	sums      map[string]map[attribute.Distinct]int64
	callbacks map[*recordingRegistration]struct{}
}

func newRecordingMeterProvider() *recordingMeterProvider {
	return &recordingMeterProvider{sums: map[string]map[attribute.Distinct]int64{}, callbacks: map[*recordingRegistration]struct{}{}}
}

func (p *recordingMeterProvider) Meter(string, ...metric.MeterOption) metric.Meter {
	return recordingMeter{p: p}
}

// collect returns every metric's value per attribute set.
func (p *recordingMeterProvider) collect(ctx context.Context) map[string]map[attribute.Distinct]int64 {
	p.mu.Lock()
	out := map[string]map[attribute.Distinct]int64{}
	for name, m := range p.sums {
		out[name] = map[attribute.Distinct]int64{}
		for k, v := range m {
			out[name][k] = v
		}
	}
	var regs []*recordingRegistration
	for r := range p.callbacks {
		regs = append(regs, r)
	}
	p.mu.Unlock()
	for _, r := range regs {
		_ = r.fn(ctx, recordingObserver{out: out})
	}
	return out
}

type recordingMeter struct {
	noop.Meter
	p *recordingMeterProvider
}

func (m recordingMeter) Int64Counter(name string, _ ...metric.Int64CounterOption) (metric.Int64Counter, error) {
	return recordingCounter{p: m.p, name: name}, nil
}

func (m recordingMeter) Int64ObservableGauge(name string, _ ...metric.Int64ObservableGaugeOption) (metric.Int64ObservableGauge, error) {
	return &recordingGauge{name: name}, nil
}

func (m recordingMeter) RegisterCallback(f metric.Callback, _ ...metric.Observable) (metric.Registration, error) {
	r := &recordingRegistration{p: m.p, fn: f}
	m.p.mu.Lock()
	m.p.callbacks[r] = struct{}{}
	m.p.mu.Unlock()
	return r, nil
}

type recordingCounter struct {
	noop.Int64Counter
	p    *recordingMeterProvider
	name string
}

func (c recordingCounter) Add(_ context.Context, v int64, opts ...metric.AddOption) {
	attrs := metric.NewAddConfig(opts).Attributes()
	c.p.mu.Lock()
	defer c.p.mu.Unlock()
	if c.p.sums[c.name] == nil {
		c.p.sums[c.name] = map[attribute.Distinct]int64{}
	}
	c.p.sums[c.name][attrs.Equivalent()] += v
}

type recordingGauge struct {
	noop.Int64ObservableGauge
	name string
}

type recordingRegistration struct {
	embedded.Registration
	p  *recordingMeterProvider
	fn metric.Callback
}

func (r *recordingRegistration) Unregister() error {
	r.p.mu.Lock()
	delete(r.p.callbacks, r)
	r.p.mu.Unlock()
	return nil
}

type recordingObserver struct {
	embedded.Observer
	out map[string]map[attribute.Distinct]int64
}

func (o recordingObserver) ObserveFloat64(metric.Float64Observable, float64, ...metric.ObserveOption) {
}

func (o recordingObserver) ObserveInt64(inst metric.Int64Observable, v int64, opts ...metric.ObserveOption) {
	g, ok := inst.(*recordingGauge)
	if !ok {
		return
	}
	attrs := metric.NewObserveConfig(opts).Attributes()
	if o.out[g.name] == nil {
		o.out[g.name] = map[attribute.Distinct]int64{}
	}
	o.out[g.name][attrs.Equivalent()] = v
}
