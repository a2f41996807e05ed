package mesh

import (
	"log/slog"

	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"mesh/identity"
	"mesh/xdsclient"
)

// Option configures New.
type Option interface{ apply(*options) }

type options struct {
	bootstrap      *xdsclient.Bootstrap
	bootstrapFile  string
	bootstrapJSON  []byte
	logger         *slog.Logger
	tracerProvider trace.TracerProvider
	meterProvider  metric.MeterProvider
	propagator     propagation.TextMapPropagator
	providers      map[string]identity.Source
}

type optionFunc func(*options)

func (f optionFunc) apply(o *options) { f(o) }

// WithBootstrapFile reads the xDS bootstrap from path instead of the
// environment (MESH_BOOTSTRAP, GRPC_XDS_BOOTSTRAP, GRPC_XDS_BOOTSTRAP_CONFIG).
func WithBootstrapFile(path string) Option {
	return optionFunc(func(o *options) { o.bootstrapFile = path })
}

// WithBootstrapJSON takes the xDS bootstrap as JSON, in the gRPC bootstrap
// format (gRFC A27).
func WithBootstrapJSON(data []byte) Option {
	return optionFunc(func(o *options) { o.bootstrapJSON = data })
}

// WithBootstrap takes an already parsed bootstrap; New validates it.
func WithBootstrap(bs *xdsclient.Bootstrap) Option {
	return optionFunc(func(o *options) { o.bootstrap = bs })
}

// WithLogger sets the logger for the mesh and everything it starts.
// The default is slog.Default().
func WithLogger(l *slog.Logger) Option {
	return optionFunc(func(o *options) { o.logger = l })
}

// WithTracerProvider sets where client and server spans go. The default is
// the global provider (otel.GetTracerProvider) at the time New is called.
func WithTracerProvider(tp trace.TracerProvider) Option {
	return optionFunc(func(o *options) { o.tracerProvider = tp })
}

// WithMeterProvider sets where Istio's standard metrics go
// (istio_requests_total and the rest). The default is the global provider
// (otel.GetMeterProvider) at the time New is called.
func WithMeterProvider(mp metric.MeterProvider) Option {
	return optionFunc(func(o *options) { o.meterProvider = mp })
}

// WithPropagator sets how trace context crosses the wire. The default is
// W3C trace context plus baggage.
func WithPropagator(p propagation.TextMapPropagator) Option {
	return optionFunc(func(o *options) { o.propagator = p })
}

// WithCertificateProvider supplies the identity source for a certificate
// provider instance that xDS TLS settings name (istiod names "default"),
// in place of the bootstrap's file_watcher for it: for example
// identity.NewCSRSource for agentless certificates, or
// identity.NewWorkloadAPISource for a SPIRE agent. The caller keeps
// ownership and closes src after the Mesh.
func WithCertificateProvider(instance string, src identity.Source) Option {
	return optionFunc(func(o *options) {
		if o.providers == nil {
			o.providers = map[string]identity.Source{}
		}
		o.providers[instance] = src
	})
}
