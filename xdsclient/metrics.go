package xdsclient

import (
	"context"
	"fmt"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
)

// Metric names of the xDS client.
const (
	metricConnected       = "mesh.xds.client.connected"
	metricResources       = "mesh.xds.client.resources"
	metricResourceUpdates = "mesh.xds.client.resource_updates"
	metricNACKs           = "mesh.xds.client.nacks"
)

// clientMetrics holds the client's instruments. The gauges are observed
// from the client's state at collection time, so they cost nothing
// between collections.
type clientMetrics struct {
	updates      metric.Int64Counter
	nacks        metric.Int64Counter
	registration metric.Registration
	typeAttrs    [numKinds]metric.MeasurementOption
}

func newClientMetrics(c *Client, mp metric.MeterProvider) (*clientMetrics, error) {
	meter := mp.Meter("mesh/xdsclient")
	m := &clientMetrics{}
	for k, info := range c.kinds {
		m.typeAttrs[k] = metric.WithAttributeSet(attribute.NewSet(attribute.String("type", info.name)))
	}
	var err error
	if m.updates, err = meter.Int64Counter(metricResourceUpdates, metric.WithDescription("Resource versions accepted and delivered to watchers."), metric.WithUnit("{update}")); err != nil {
		return nil, fmt.Errorf("xds: metrics: %w", err)
	}
	if m.nacks, err = meter.Int64Counter(metricNACKs, metric.WithDescription("Responses rejected (NACKed) by the client."), metric.WithUnit("{response}")); err != nil {
		return nil, fmt.Errorf("xds: metrics: %w", err)
	}
	connected, err := meter.Int64ObservableGauge(metricConnected, metric.WithDescription("1 while the ADS stream is up and answering, else 0."))
	if err != nil {
		return nil, fmt.Errorf("xds: metrics: %w", err)
	}
	resources, err := meter.Int64ObservableGauge(metricResources, metric.WithDescription("Watched resources by type and status (ACKED, NACKED, DOES_NOT_EXIST, REQUESTED)."), metric.WithUnit("{resource}"))
	if err != nil {
		return nil, fmt.Errorf("xds: metrics: %w", err)
	}
	m.registration, err = meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		v := int64(0)
		if c.Connected() {
			v = 1
		}
		o.ObserveInt64(connected, v)
		type key struct {
			kind   string
			status ResourceStatusKind
		}
		counts := map[key]int64{}
		for _, rs := range c.Dump() {
			counts[key{rs.Type, rs.Status}]++
		}
		for k, n := range counts {
			o.ObserveInt64(resources, n, metric.WithAttributes(attribute.String("type", k.kind), attribute.String("status", string(k.status))))
		}
		return nil
	}, connected, resources)
	if err != nil {
		return nil, fmt.Errorf("xds: metrics: %w", err)
	}
	return m, nil
}

func (m *clientMetrics) update(kind resourceKind) {
	m.updates.Add(context.Background(), 1, m.typeAttrs[kind])
}

func (m *clientMetrics) nack(kind resourceKind) {
	m.nacks.Add(context.Background(), 1, m.typeAttrs[kind])
}

func (m *clientMetrics) close() {
	if m.registration != nil {
		_ = m.registration.Unregister()
	}
}
