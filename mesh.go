package mesh

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"mesh/balancer"
	"mesh/identity"
	"mesh/internal/flowcontrol"
	"mesh/telemetry"
	"mesh/transport"
	"mesh/xdsclient"
)

// ErrClosed is returned by methods of a Mesh that has been closed.
var ErrClosed = errors.New("mesh: closed")

// Scheme is the gRPC target scheme a Mesh resolves: "mesh:///host:port".
const Scheme = "mesh"

// Mesh is one process's membership in the service mesh: one xDS client
// (one ADS stream per control plane server, shared by every channel and
// server it makes), the workload's identities, and its telemetry.
//
// Make one Mesh per process, early, and Close it last.
type Mesh struct {
	logger    *slog.Logger
	bootstrap *xdsclient.Bootstrap
	xds       *xdsclient.Client
	providers transport.ProviderMap // certificate provider instances by name
	certs     certProviders         // those, then SDS secrets
	resolver  *balancer.ResolverBuilder
	clientTLS credentials.TransportCredentials
	// peerMetadata is this workload's Istio peer metadata, exchanged at
	// the handshake of mTLS connections with other mesh workloads; "" for
	// none.
	peerMetadata string

	clientTelemetry *telemetry.ClientInterceptor
	tap             *telemetry.Tap // every request's access log entry, for meshctl tap
	serverTelemetry *telemetry.ServerInterceptor
	telemetry       []telemetry.Option // for the net/http middleware and transport

	// The HTTP client's router and transport are built by the first
	// HTTPClient call: a gRPC-only program neither runs nor links them.
	httpOnce      sync.Once
	httpTransport http.RoundTripper      // routed, secured and measured
	httpRouter    *balancer.RoundTripper // nil until HTTPClient; guarded by mu

	servingState func(addr net.Addr, serving bool, err error) // may be nil
	maxConnAge   time.Duration                                // from WithMaxConnectionAge; 0 derives it
	limits       limits                                       // see limits.go

	mu      sync.Mutex
	closed  bool
	closers []func() error
}

// New joins the mesh: it reads the xDS bootstrap (from an option, or from
// MESH_BOOTSTRAP, GRPC_XDS_BOOTSTRAP or GRPC_XDS_BOOTSTRAP_CONFIG), loads the
// certificate providers it names and creates the xDS client. Streams to the
// control plane open with the first Dial or Serve. ctx bounds only the setup.
func New(ctx context.Context, opts ...Option) (*Mesh, error) {
	o := options{limits: defaultLimits()}
	for _, opt := range opts {
		opt.apply(&o)
	}
	logger := o.logger
	if logger == nil {
		logger = slog.Default()
	}
	bs, err := loadBootstrap(&o)
	if err != nil {
		return nil, fmt.Errorf("mesh: %w", err)
	}
	m := &Mesh{logger: logger, bootstrap: bs, providers: transport.ProviderMap{}, servingState: o.servingState, maxConnAge: o.maxConnAge, limits: o.limits}
	for name, src := range o.providers {
		m.providers[name] = src
	}
	if err := m.startProviders(ctx); err != nil {
		m.Close()
		return nil, fmt.Errorf("mesh: %w", err)
	}
	mp := o.meterProvider
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	xdsOpts := []xdsclient.Option{xdsclient.WithLogger(logger), xdsclient.WithMeterProvider(mp)}
	if o.xdsCache != "" {
		xdsOpts = append(xdsOpts, xdsclient.WithCache(o.xdsCache))
	}
	if o.xdsBackoff != nil {
		xdsOpts = append(xdsOpts, xdsclient.WithBackoff(o.xdsBackoff))
	}
	m.xds, err = xdsclient.New(bs, xdsOpts...)
	if err != nil {
		m.Close()
		return nil, fmt.Errorf("mesh: %w", err)
	}
	m.closers = append(m.closers, m.xds.Close)
	// TLS settings name either a certificate provider instance (the
	// bootstrap's, or an option's) or an SDS secret, which is watched on the
	// ADS stream the first time a handshake needs it.
	sds := identity.NewSDSProviders(m.xds, identity.WithLogger(logger))
	m.closers = append(m.closers, sds.Close)
	m.certs = certProviders{static: m.providers, sds: sds}
	m.resolver = balancer.NewResolverBuilder(m.xds,
		balancer.WithLogger(logger), balancer.WithListenerName(bs.ClientListenerName))

	tp := o.tracerProvider
	if tp == nil {
		tp = otel.GetTracerProvider()
	}
	workload := localWorkload(bs, m.providers)
	if err := workload.Validate(); err != nil {
		m.logger.Warn("node metadata does not make valid telemetry labels; leaving them out", "error", err)
		workload = telemetry.Workload{}
	}
	if !workload.IsZero() {
		// Exchanged once per connection with other mesh workloads,
		// instead of in the headers of each call (telemetry still sends
		// it in headers to peers that do not exchange it).
		if _, value, err := telemetry.PeerMetadata(workload); err == nil {
			m.peerMetadata = value
		}
	}
	m.clientTLS = transport.NewClientCredentials(m.certs, transport.WithLogger(logger), transport.WithPeerMetadata(m.peerMetadata))
	m.tap = telemetry.NewTap()
	telem := []telemetry.Option{
		telemetry.WithTracerProvider(tp),
		telemetry.WithMeterProvider(mp),
		telemetry.WithWorkload(workload),
		telemetry.WithLogger(logger),
		telemetry.WithTap(m.tap),
	}
	if o.propagator != nil {
		telem = append(telem, telemetry.WithPropagator(o.propagator))
	}
	if o.accessLog != nil {
		telem = append(telem, telemetry.WithAccessLog(o.accessLog, o.accessLogCfg))
	}
	// Interceptors, not stats handlers: with any stats handler installed
	// grpc-go builds an object per event of every RPC (benchmarks/TELEMETRY.md).
	// On gRPC the peer's identity is read from mesh's own credentials; the
	// HTTP middleware and transport read the connection's TLS state.
	grpcTelem := []telemetry.GRPCOption{telemetry.WithPeerAuthIdentity(peerAuthPrincipal), telemetry.WithPeerAuthMetadata(peerAuthMetadata)}
	for _, o := range telem {
		grpcTelem = append(grpcTelem, o)
	}
	m.clientTelemetry = telemetry.NewClientInterceptor(grpcTelem...)
	m.serverTelemetry = telemetry.NewServerInterceptor(grpcTelem...)
	m.telemetry = telem
	return m, nil
}

// startHTTP builds the HTTP client's router and transport. After Close
// the router is closed at once, so requests fail as they would have on a
// router made before.
func (m *Mesh) startHTTP() {
	rt := balancer.NewRoundTripper(m.xds, transport.NewHTTPDialer(m.certs, transport.WithLogger(m.logger)),
		balancer.WithLogger(m.logger), balancer.WithListenerName(m.bootstrap.ClientListenerName))
	m.httpTransport = telemetry.Transport(rt, m.telemetry...)
	m.mu.Lock()
	m.httpRouter = rt
	closed := m.closed
	if !closed {
		m.closers = append(m.closers, rt.Close)
	}
	m.mu.Unlock()
	if closed {
		_ = rt.Close()
	}
}

func loadBootstrap(o *options) (*xdsclient.Bootstrap, error) {
	switch {
	case o.bootstrap != nil:
		if err := o.bootstrap.Validate(); err != nil {
			return nil, err
		}
		return o.bootstrap, nil
	case o.bootstrapJSON != nil:
		return xdsclient.ParseBootstrap(o.bootstrapJSON)
	case o.bootstrapFile != "":
		return xdsclient.LoadBootstrapFile(o.bootstrapFile)
	default:
		return xdsclient.BootstrapFromEnv()
	}
}

// startProviders starts one identity source per certificate provider
// instance of the bootstrap that no option supplied. Plugins mesh does not implement are logged and
// left out: a resource that names one fails its handshakes with that name.
func (m *Mesh) startProviders(ctx context.Context) error {
	for name, cp := range m.bootstrap.CertificateProviders {
		if _, given := m.providers[name]; given {
			continue // WithCertificateProvider replaces the bootstrap's
		}
		if cp.FileWatcher == nil {
			m.logger.Warn("certificate provider plugin not supported; resources naming it will fail their handshakes",
				"instance", name, "plugin", cp.PluginName)
			continue
		}
		fw := cp.FileWatcher
		src, err := identity.NewFileSource(ctx, identity.FileConfig{
			CertFile:        fw.CertificateFile,
			KeyFile:         fw.PrivateKeyFile,
			CAFile:          fw.CACertificateFile,
			RefreshInterval: fw.RefreshInterval,
		}, identity.WithLogger(m.logger))
		if err != nil {
			return fmt.Errorf("certificate provider %q: %w", name, err)
		}
		m.providers[name] = src
		m.closers = append(m.closers, src.Close)
	}
	return nil
}

// Bootstrap returns the bootstrap the mesh was started with. It must not be
// modified.
func (m *Mesh) Bootstrap() *xdsclient.Bootstrap { return m.bootstrap }

// CertificateProviders returns the mesh's certificate provider instances
// (from options and the bootstrap) by name, for admin pages that show the
// identity in force. The map is a copy; the sources are shared.
func (m *Mesh) CertificateProviders() map[string]identity.Source {
	out := make(map[string]identity.Source, len(m.providers))
	for name, src := range m.providers {
		out[name] = src
	}
	return out
}

// XDSClient returns the mesh's xDS client, for watching resources directly.
//
// # Experimental
func (m *Mesh) XDSClient() *xdsclient.Client { return m.xds }

// DialOptions returns what a gRPC channel needs to be routed, secured and
// traced by the mesh: the "mesh" resolver with the interceptors that apply
// each route's timeout and retry policy, the mesh's transport credentials
// and its telemetry interceptors. Its HTTP/2 flow-control windows are fixed
// (4 MiB per stream, 16 MiB per connection), as Envoy's are, rather than
// grown by grpc-go's estimation, which pings the server every round trip
// while data flows; grpc.WithInitialWindowSize and
// grpc.WithInitialConnWindowSize after them choose others. Use them with a
// "mesh:///host:port" target:
//
//	conn, err := grpc.NewClient("mesh:///payments.default.svc.cluster.local:8080", m.DialOptions()...)
//
// They are a slice, not one grpc.DialOption, because grpc-go offers no public
// way to merge dial options.
func (m *Mesh) DialOptions() []grpc.DialOption {
	// The resolver, and the route's timeouts and retries; telemetry's
	// interceptors run inside the retrying ones, so each attempt is
	// measured on its own, and are called by them directly (grpc-go's
	// chain would cost a closure per call).
	opts := m.resolver.DialOptionsAround(m.clientTelemetry.Unary(), m.clientTelemetry.Stream())
	opts = append(opts, flowcontrol.DialOptions()...)
	return append(opts,
		grpc.WithTransportCredentials(m.clientTLS),
		grpc.WithMaxHeaderListSize(uint32(m.limits.maxHeaderBytes)))
}

// Dial returns a client for target, a "host:port" that the control plane
// knows as a listener (istiod: the service's host and port), routed by xDS.
// Further options are applied after the mesh's own. Dial does not block: the
// channel connects on first use. It is grpc.NewClient with DialOptions.
func (m *Mesh) Dial(target string, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	if m.isClosed() {
		return nil, ErrClosed
	}
	if !strings.HasPrefix(target, Scheme+":") {
		target = Scheme + ":///" + target
	}
	conn, err := grpc.NewClient(target, append(m.DialOptions(), opts...)...)
	if err != nil {
		return nil, fmt.Errorf("mesh: dial %s: %w", target, err)
	}
	return conn, nil
}

// HTTPClient returns an HTTP client for mesh services: a request to
// "http://host:port/path" is routed by the listener "host:port" like a gRPC
// call (route match on path, headers and query; weighted cluster; endpoint;
// retries and timeouts) and sent over mTLS when the cluster says so (the
// mesh adds TLS: use http://). Requests are measured and traced as gRPC
// calls are.
func (m *Mesh) HTTPClient() *http.Client {
	m.httpOnce.Do(m.startHTTP)
	return &http.Client{Transport: m.httpTransport}
}

func (m *Mesh) isClosed() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.closed
}

// Err returns ErrClosed once Close has been called, and nil before: the
// health a /healthz page reports.
func (m *Mesh) Err() error {
	if m.isClosed() {
		return ErrClosed
	}
	return nil
}

// ClusterStates returns every cluster the mesh's gRPC channels and HTTP
// client route to, with its endpoints' connection state, outlier ejection
// and requests in flight: what the admin pages (package mesh/admin) show
// at /debug/clusters.
func (m *Mesh) ClusterStates() []balancer.ClusterState {
	states := m.resolver.ClusterStates()
	m.mu.Lock()
	rt := m.httpRouter
	m.mu.Unlock()
	if rt != nil {
		states = append(states, rt.ClusterStates()...)
	}
	return states
}

// Tap returns the tap of the mesh's access log: every request its gRPC and
// HTTP clients and servers handle, for live subscribers such as the admin
// pages' /debug/tap (meshctl tap). Nothing is kept while nobody taps.
func (m *Mesh) Tap() *telemetry.Tap { return m.tap }

// Close stops the xDS client and the certificate watchers. Channels and
// servers made from the mesh should be closed first. Close is idempotent.
func (m *Mesh) Close() error {
	m.mu.Lock()
	if m.closed {
		m.mu.Unlock()
		return nil
	}
	m.closed = true
	closers := m.closers
	m.closers = nil
	m.mu.Unlock()
	var errs []error
	for i := len(closers) - 1; i >= 0; i-- {
		errs = append(errs, closers[i]())
	}
	return errors.Join(errs...)
}

// certProviders finds the identity source a TLS setting names: a
// certificate provider instance, or an SDS secret ("sds:<name>").
type certProviders struct {
	static transport.ProviderMap
	sds    *identity.SDSProviders
}

func (p certProviders) Provider(name string) (identity.Source, bool) {
	if src, ok := p.static.Provider(name); ok {
		return src, true
	}
	return p.sds.Provider(name)
}

// connectionAge is how long servers keep a connection (see
// WithMaxConnectionAge); 0 means unbounded.
func (m *Mesh) connectionAge() time.Duration {
	if m.maxConnAge != 0 {
		return max(m.maxConnAge, 0)
	}
	src, ok := m.providers["default"]
	if !ok {
		return 0 // identities from SDS: their lifetime is not known here
	}
	svid, err := src.GetX509SVID()
	if err != nil || len(svid.Certificates) == 0 {
		return 0
	}
	leaf := svid.Certificates[0]
	return connectionAgeFor(leaf.NotAfter.Sub(leaf.NotBefore))
}

// connectionAgeFor is a quarter of a certificate lifetime: SVIDs rotate at
// half their lifetime, so a connection made with the newest one is
// re-made well before it expires. It is at least a second.
func connectionAgeFor(lifetime time.Duration) time.Duration {
	return max(lifetime/4, time.Second)
}
