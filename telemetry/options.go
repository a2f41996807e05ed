package telemetry

import (
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// Option configures NewClientHandler and NewServerHandler.
type Option interface{ apply(*config) }

type config struct {
	tracerProvider trace.TracerProvider
	propagator     propagation.TextMapPropagator
	attributes     []attribute.KeyValue
}

type optionFunc func(*config)

func (f optionFunc) apply(c *config) { f(c) }

// WithTracerProvider sets where spans go. Without it, or given nil, a handler
// uses otel.GetTracerProvider() as it was when the handler was built.
func WithTracerProvider(tp trace.TracerProvider) Option {
	return optionFunc(func(c *config) {
		if tp != nil {
			c.tracerProvider = tp
		}
	})
}

// WithPropagator sets how trace context travels in gRPC metadata. Without it,
// or given nil, a handler uses W3C Trace Context and W3C Baggage
// (traceparent, tracestate and baggage headers); the global propagator is
// deliberately not consulted, so one library cannot change another's wire
// format behind its back.
func WithPropagator(p propagation.TextMapPropagator) Option {
	return optionFunc(func(c *config) {
		if p != nil {
			c.propagator = p
		}
	})
}

// WithAttributes adds attributes to every span the handler records, for
// example the workload's own name or mesh cluster. Repeated uses accumulate.
func WithAttributes(attrs ...attribute.KeyValue) Option {
	return optionFunc(func(c *config) {
		c.attributes = append(c.attributes, attrs...)
	})
}

// DefaultPropagator returns the propagator handlers use unless told
// otherwise: W3C Trace Context followed by W3C Baggage.
func DefaultPropagator() propagation.TextMapPropagator {
	return propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})
}

func newConfig(opts []Option) config {
	var c config
	for _, o := range opts {
		if o != nil {
			o.apply(&c)
		}
	}
	if c.tracerProvider == nil {
		c.tracerProvider = otel.GetTracerProvider()
	}
	if c.propagator == nil {
		c.propagator = DefaultPropagator()
	}
	// Own the slice, so callers reusing their backing array cannot race spans.
	c.attributes = append([]attribute.KeyValue(nil), c.attributes...)
	return c
}
