package telemetry

import (
	"context"
	"log/slog"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc/credentials"
)

// Option configures every constructor: NewClientHandler, NewServerHandler,
// NewClientInterceptor, NewServerInterceptor, Middleware and Transport.
type Option interface {
	GRPCOption
	apply(*config)
}

// GRPCOption configures the gRPC constructors only (NewClientHandler,
// NewServerHandler, NewClientInterceptor, NewServerInterceptor): every
// Option, and WithPeerIdentity, which reads a gRPC peer. The HTTP
// constructors take Option alone, so none of them is handed an option it
// would ignore.
type GRPCOption interface{ applyGRPC(*config) }

type config struct {
	tracerProvider trace.TracerProvider
	meterProvider  metric.MeterProvider
	propagator     propagation.TextMapPropagator
	attributes     []attribute.KeyValue
	workload       Workload
	service        string
	peerIdentity   func(context.Context) (principal string, ok bool)
	peerAuthID     func(credentials.AuthInfo) (principal string, ok bool)
	peerAuthMeta   func(credentials.AuthInfo) (value string, ok bool)
	accessLogger   *slog.Logger
	accessLog      AccessLogConfig
	tap            *Tap
	logger         *slog.Logger
	now            func() time.Time
}

type optionFunc func(*config)

func (f optionFunc) apply(c *config)     { f(c) }
func (f optionFunc) applyGRPC(c *config) { f(c) }

type grpcOptionFunc func(*config)

func (f grpcOptionFunc) applyGRPC(c *config) { f(c) }

// grpcOptions lets the gRPC constructors share newConfig with the HTTP ones.
func grpcOptions(opts []GRPCOption) []Option {
	out := make([]Option, 0, len(opts))
	for _, o := range opts {
		if o != nil {
			out = append(out, optionFunc(o.applyGRPC))
		}
	}
	return out
}

// WithTracerProvider sets where spans go. Without it, or given nil, a handler
// uses otel.GetTracerProvider() as it was when the handler was built.
func WithTracerProvider(tp trace.TracerProvider) Option {
	return optionFunc(func(c *config) {
		if tp != nil {
			c.tracerProvider = tp
		}
	})
}

// WithMeterProvider sets where Istio's standard metrics go. Without it, or
// given nil, a handler uses otel.GetMeterProvider() as it was when the
// handler was built.
func WithMeterProvider(mp metric.MeterProvider) Option {
	return optionFunc(func(c *config) {
		if mp != nil {
			c.meterProvider = mp
		}
	})
}

// WithPropagator sets how trace context travels in gRPC metadata and HTTP
// headers. Without it, or given nil, a handler uses W3C Trace Context and W3C
// Baggage (traceparent, tracestate and baggage headers); the global
// propagator is deliberately not consulted, so one library cannot change
// another's wire format behind its back. Use B3{} or EnvoyPropagator() to
// join traces with Envoy sidecars that only speak B3.
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

// WithWorkload names the local workload: it fills the source_* labels of
// client metrics and the destination_* labels of server metrics, and is sent
// to peers as Istio peer metadata (x-envoy-peer-metadata) so that their
// metrics can name this workload too. Without it nothing is sent and the
// local labels read "unknown".
func WithWorkload(w Workload) Option {
	return optionFunc(func(c *config) { c.workload = w })
}

// WithService sets destination_service: on a client, the host the channel
// or HTTP client addresses (the facade passes the dial target, for example
// "payments.shop.svc.cluster.local"); on a server, the service host it
// serves. A port, if present, is dropped. Without it a client uses each
// request's authority and a server the authority the client sent.
func WithService(host string) Option {
	return optionFunc(func(c *config) { c.service = stripPort(host) })
}

// WithPeerIdentity sets how a gRPC handler learns the verified SPIFFE ID of
// the peer from an RPC's context, for the source_principal and
// destination_principal labels. Without it the handler reads the leaf
// certificate of a standard credentials.TLSInfo; the facade passes a function
// that reads mesh's own transport credentials. A nil function is ignored.
// The HTTP constructors read the request's or response's TLS state instead.
func WithPeerIdentity(f func(ctx context.Context) (principal string, ok bool)) GRPCOption {
	return grpcOptionFunc(func(c *config) {
		if f != nil {
			c.peerIdentity = f
		}
	})
}

// WithPeerAuthIdentity is WithPeerIdentity for a function that reads the
// peer's verified SPIFFE ID from its connection's credentials.AuthInfo (as
// grpc-go's peer.Peer holds it): a client interceptor then needs no
// context carrying the peer, one allocation per call less. It takes
// precedence over WithPeerIdentity. A nil function is ignored.
func WithPeerAuthIdentity(f func(credentials.AuthInfo) (principal string, ok bool)) GRPCOption {
	return grpcOptionFunc(func(c *config) {
		if f != nil {
			c.peerAuthID = f
		}
	})
}

// WithPeerAuthMetadata reads the peer's Istio peer metadata (an
// x-envoy-peer-metadata value) from its connection's
// credentials.AuthInfo, for credentials that exchange it once per
// connection (mesh's transport.WithPeerMetadata). On such a connection a
// server takes the client's labels from there and sends no peer metadata
// headers back; a client sends none and asks for no response headers once
// its calls have found their servers exchanging, until one does not. A nil
// function is ignored.
func WithPeerAuthMetadata(f func(credentials.AuthInfo) (value string, ok bool)) GRPCOption {
	return grpcOptionFunc(func(c *config) {
		if f != nil {
			c.peerAuthMeta = f
		}
	})
}

// WithAccessLog writes one Envoy-style access log record per request to
// logger, subject to cfg's filter and sampling. A nil logger turns access
// logging off. An invalid cfg (see AccessLogConfig.Validate) is reported
// through the handler's logger and logs every request instead.
func WithAccessLog(logger *slog.Logger, cfg AccessLogConfig) Option {
	return optionFunc(func(c *config) {
		c.accessLogger = logger
		c.accessLog = cfg
	})
}

// WithLogger sets where the handler reports its own problems, such as an
// instrument the meter provider refused. The default is slog.Default().
func WithLogger(logger *slog.Logger) Option {
	return optionFunc(func(c *config) {
		if logger != nil {
			c.logger = logger
		}
	})
}

// withClock replaces time.Now, so tests can make durations exact.
func withClock(now func() time.Time) Option {
	return optionFunc(func(c *config) {
		if now != nil {
			c.now = now
		}
	})
}

// DefaultPropagator returns the propagator handlers use unless told
// otherwise: W3C Trace Context followed by W3C Baggage.
func DefaultPropagator() propagation.TextMapPropagator {
	return propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, propagation.Baggage{})
}

// EnvoyPropagator returns a propagator that writes and reads both W3C Trace
// Context and multi-header B3, plus W3C Baggage: Envoy sidecars configured
// for either format join the trace.
func EnvoyPropagator() propagation.TextMapPropagator {
	return propagation.NewCompositeTextMapPropagator(propagation.TraceContext{}, B3{}, propagation.Baggage{})
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
	if c.meterProvider == nil {
		c.meterProvider = otel.GetMeterProvider()
	}
	if c.propagator == nil {
		c.propagator = DefaultPropagator()
	}
	if c.logger == nil {
		c.logger = slog.Default()
	}
	if c.now == nil {
		c.now = time.Now
	}
	// Own the slice, so callers reusing their backing array cannot race spans.
	c.attributes = append([]attribute.KeyValue(nil), c.attributes...)
	return c
}
