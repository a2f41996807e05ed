// Package admin serves a mesh's admin pages: /metrics (from a handler you
// give, typically promhttp over the OpenTelemetry Prometheus exporter's
// registry), /debug/config with every xDS resource's version, ACK/NACK
// status and decoded contents (routes with matchers, weights, timeouts,
// retries and faults; clusters with LB policy, circuit breaker, outlier
// detection and TLS) and the workload's certificates (SPIFFE ID, serial,
// expiry, trust bundle; never keys), /debug/clusters with endpoint state, /debug/tap (every request live, as
// meshctl tap shows it), /debug/graph (the
// workload's own service graph, drawn from its metrics as Kiali draws it)
// and /healthz.
//
//	srv, err := admin.Serve(m, "127.0.0.1:15000", promhttp.HandlerFor(registry, promhttp.HandlerOpts{}))
//	defer srv.Close() // before m.Close
//
// It is a package of its own, so a program that serves no admin pages does
// not link them, nor the Prometheus parsing the graph needs. The pages are
// read-only and opt-in; bind them to a private address, as Envoy's admin
// port is.
package admin

import (
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"slices"

	"mesh"
	pages "mesh/internal/admin"
	"mesh/internal/admin/tapview"
	"mesh/internal/admin/xdsview"
	"mesh/telemetry"
)

// Option configures Serve and Handler.
type Option interface{ apply(*options) }

type options struct{ logger *slog.Logger }

type optionFunc func(*options)

func (f optionFunc) apply(o *options) { f(o) }

// WithLogger sets the logger for failed pages and a listener that stops
// serving; the default is slog.Default().
func WithLogger(l *slog.Logger) Option {
	return optionFunc(func(o *options) {
		if l != nil {
			o.logger = l
		}
	})
}

func newOptions(opts []Option) options {
	o := options{logger: slog.Default()}
	for _, opt := range opts {
		if opt != nil {
			opt.apply(&o)
		}
	}
	return o
}

// Handler returns m's admin pages for mounting on a server of your own.
// metrics serves /metrics (nil leaves it out). /debug/graph is served only
// by Serve, which knows where its own /metrics are.
func Handler(m *mesh.Mesh, metrics http.Handler, opts ...Option) http.Handler {
	return handler(m, metrics, nil, newOptions(opts).logger)
}

func handler(m *mesh.Mesh, metrics http.Handler, graph pages.GraphSource, logger *slog.Logger) http.Handler {
	if metrics != nil {
		metrics = telemetry.EnvoyBucketLabels(metrics) // le="1800000", as Envoy prints it
	}
	var tap http.Handler
	if t := m.Tap(); t != nil {
		tap = tapview.Handler(t, logger)
	}
	return pages.NewHandler(pages.Config{
		Metrics:      metrics,
		Graph:        graph,
		Clusters:     func() []pages.ClusterStatus { return clusterStatus(m) },
		XDS:          func() []pages.ResourceView { return xdsview.Resources(m.XDSClient().Dump()) },
		Certificates: func() []pages.CertificateView { return certificates(m) },
		Healthy:      m.Err,
		Tap:          tap,
		Logger:       logger,
	})
}

// clusterStatus is /debug/clusters: every cluster the mesh's gRPC channels
// and HTTP client route to, with its endpoints' connection state, outlier
// ejection and requests in flight.
func clusterStatus(m *mesh.Mesh) []pages.ClusterStatus {
	var out []pages.ClusterStatus
	for _, c := range m.ClusterStates() {
		cs := pages.ClusterStatus{Channel: c.Channel, Name: c.Name, InFlight: c.InFlight}
		for _, e := range c.Endpoints {
			cs.Endpoints = append(cs.Endpoints, pages.EndpointStatus{
				Address: e.Address, Locality: e.Locality, Weight: e.Weight, Health: e.Health,
				Ejected: e.Ejected, EjectedUntil: e.EjectedUntil, InFlight: e.InFlight,
			})
		}
		out = append(out, cs)
	}
	return out
}

// certificates is /debug/config's certificates: each certificate
// provider's current SVID (ID, serial, validity) and the trust bundle of
// its trust domain. The SVID's private key is never read.
func certificates(m *mesh.Mesh) []pages.CertificateView {
	providers := m.CertificateProviders()
	names := slices.Sorted(maps.Keys(providers))
	var out []pages.CertificateView
	for _, name := range names {
		src := providers[name]
		svid, err := src.GetX509SVID()
		if err != nil || len(svid.Certificates) == 0 {
			continue // a provider of roots only, or not ready yet
		}
		var roots []*x509.Certificate
		if b, err := src.GetX509BundleForTrustDomain(svid.ID.TrustDomain()); err == nil {
			roots = b.X509Authorities()
		}
		v := pages.CertificateOf(svid.Certificates, roots)
		v.Provider = name
		out = append(out, v)
	}
	return out
}

// Server serves a mesh's admin pages on a listener of its own until Close.
type Server struct {
	addr    string
	srv     *http.Server
	scraper *pages.Scraper // nil without metrics
	done    chan struct{}
}

// Serve serves m's admin pages on addr (e.g. "127.0.0.1:15000"; port 0
// picks one, see Addr). With metrics, /debug/graph draws the workload's
// own edges from its /metrics. Close the Server before the Mesh.
func Serve(m *mesh.Mesh, addr string, metrics http.Handler, opts ...Option) (*Server, error) {
	o := newOptions(opts)
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("admin: listener: %w", err)
	}
	s := &Server{addr: lis.Addr().String(), done: make(chan struct{})}
	// The workload's own graph: the edges its metrics report, as seen
	// from here. The embedded control plane draws the whole mesh's.
	var graph pages.GraphSource
	if metrics != nil {
		self := []string{"http://" + s.addr + "/metrics"}
		s.scraper = pages.NewScraper(func() []string { return self }, pages.WithLogger(o.logger))
		graph = s.scraper
	}
	s.srv = &http.Server{Handler: handler(m, metrics, graph, o.logger)}
	go func() {
		defer close(s.done)
		if err := s.srv.Serve(lis); !errors.Is(err, http.ErrServerClosed) {
			o.logger.Error("admin listener stopped", "address", s.addr, "error", err)
		}
	}()
	return s, nil
}

// Addr returns the address the pages are served on.
func (s *Server) Addr() string { return s.addr }

// Close stops serving and waits for the listener's goroutine.
func (s *Server) Close() error {
	err := s.srv.Close()
	<-s.done
	if s.scraper != nil {
		s.scraper.CloseIdleConnections()
	}
	return err
}
