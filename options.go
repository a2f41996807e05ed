package mesh

import (
	"log/slog"
	"net"
	"time"

	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"mesh/identity"
	"mesh/telemetry"
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
	accessLog      *slog.Logger
	maxConnAge     time.Duration
	accessLogCfg   telemetry.AccessLogConfig
	xdsCache       string
	xdsBackoff     func(attempt int) time.Duration
	servingState   func(addr net.Addr, serving bool, err error)
	limits         limits // see limits.go
}

type optionFunc func(*options)

func (f optionFunc) apply(o *options) { f(o) }

// WithBootstrapFile reads the xDS bootstrap from path instead of the
// environment (MESH_BOOTSTRAP, GRPC_XDS_BOOTSTRAP, GRPC_XDS_BOOTSTRAP_CONFIG).
// Of WithBootstrapFile, WithBootstrapJSON and WithBootstrap, the last
// given is the bootstrap.
func WithBootstrapFile(path string) Option {
	return optionFunc(func(o *options) { o.setBootstrap(nil, nil, path) })
}

// WithBootstrapJSON takes the xDS bootstrap as JSON, in the gRPC bootstrap
// format (gRFC A27). It replaces an earlier WithBootstrapFile or
// WithBootstrap.
func WithBootstrapJSON(data []byte) Option {
	return optionFunc(func(o *options) { o.setBootstrap(nil, data, "") })
}

// WithBootstrap takes an already parsed bootstrap; New validates it. It
// replaces an earlier WithBootstrapFile or WithBootstrapJSON.
func WithBootstrap(bs *xdsclient.Bootstrap) Option {
	return optionFunc(func(o *options) { o.setBootstrap(bs, nil, "") })
}

// setBootstrap keeps one bootstrap source, so that none given is ignored
// in favour of another behind the caller's back.
func (o *options) setBootstrap(bs *xdsclient.Bootstrap, data []byte, path string) {
	o.bootstrap, o.bootstrapJSON, o.bootstrapFile = bs, data, path
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
// csr.NewSource (mesh/identity/csr) for agentless certificates, or
// workloadapi.NewSource (mesh/identity/workloadapi) for a SPIRE agent. The caller keeps
// ownership and closes src after the Mesh.
func WithCertificateProvider(instance string, src identity.Source) Option {
	return optionFunc(func(o *options) {
		if o.providers == nil {
			o.providers = map[string]identity.Source{}
		}
		o.providers[instance] = src
	})
}

// WithXDSCache keeps the last good xDS resources in the file at path
// (xdsclient.WithCache), so a process restarted while the control plane is
// down still routes with the configuration it had.
func WithXDSCache(path string) Option {
	return optionFunc(func(o *options) { o.xdsCache = path })
}

// WithXDSBackoff sets the delay before reconnect attempt number attempt
// (0-based) to the control plane (xdsclient.WithBackoff). The default is
// gRPC's connection backoff.
func WithXDSBackoff(backoff func(attempt int) time.Duration) Option {
	return optionFunc(func(o *options) { o.xdsBackoff = backoff })
}

// WithServingStateCallback sets fn, called whenever a listener of a
// GRPCServer or HTTPServer made from the mesh starts or stops serving
// (gRFC A36 serving mode): serving is true when its inbound listener
// resource arrives, false with err saying why when the control plane
// removes it or never sends a usable one. While not serving, new
// connections are closed at once. fn runs on the xDS client's goroutine
// and must not block.
func WithServingStateCallback(fn func(addr net.Addr, serving bool, err error)) Option {
	return optionFunc(func(o *options) { o.servingState = fn })
}

// WithAccessLog writes one record per request, gRPC or HTTP, client and
// server side, to l, with Envoy's access log fields (start time, method,
// path, status, duration, upstream cluster and host, response flags,
// bytes, peer principal, request and trace ids). cfg filters and samples;
// sampling follows x-request-id, so every hop logs the same requests.
func WithAccessLog(l *slog.Logger, cfg telemetry.AccessLogConfig) Option {
	return optionFunc(func(o *options) { o.accessLog, o.accessLogCfg = l, cfg })
}

// WithMaxConnectionAge bounds how long a mesh server keeps a client
// connection: past it a gRPC server sends GOAWAY (calls in flight finish),
// an HTTP server closes the connection after its next response (GOAWAY on
// HTTP/2), and the client reconnects with a new handshake, so long-lived connections
// move to rotated certificates before the old ones expire. The default is
// a quarter of the server's SVID lifetime (workloads rotate at half of
// it); a negative d turns it off.
func WithMaxConnectionAge(d time.Duration) Option {
	return optionFunc(func(o *options) { o.maxConnAge = d })
}
