package mesh

import (
	"errors"
	"fmt"
	"net"
	"net/http"

	"mesh/internal/admin"
	"mesh/telemetry"
)

// AdminHandler returns the mesh's admin pages (see WithAdmin) for mounting
// on a server of your own; /debug/graph is served only on WithAdmin's
// listener, which knows where its own /metrics are.
func (m *Mesh) AdminHandler(metrics http.Handler) http.Handler {
	return m.adminHandler(metrics, nil)
}

func (m *Mesh) adminHandler(metrics http.Handler, graph admin.GraphSource) http.Handler {
	if metrics != nil {
		metrics = telemetry.EnvoyBucketLabels(metrics) // le="1800000", as Envoy prints it
	}
	return admin.NewHandler(admin.Config{
		Metrics:  metrics,
		Graph:    graph,
		Clusters: m.clusterStatus,
		XDS:      m.xds.Dump,
		Healthy: func() error {
			if m.isClosed() {
				return ErrClosed
			}
			return nil
		},
		Logger: m.logger,
	})
}

// AdminAddr returns the address the admin pages are served on, or "" when
// WithAdmin was not given.
func (m *Mesh) AdminAddr() string { return m.adminAddr }

// serveAdmin starts the admin listener; Close stops it and waits.
func (m *Mesh) serveAdmin(addr string, metrics http.Handler) error {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("admin listener: %w", err)
	}
	m.adminAddr = lis.Addr().String()
	// The workload's own graph: the edges its metrics report, as seen
	// from here. The embedded control plane draws the whole mesh's.
	var graph admin.GraphSource
	var scraper *admin.Scraper
	if metrics != nil {
		self := []string{"http://" + m.adminAddr + "/metrics"}
		scraper = admin.NewScraper(func() []string { return self }, admin.WithLogger(m.logger))
		graph = scraper
	}
	srv := &http.Server{Handler: m.adminHandler(metrics, graph)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(lis); !errors.Is(err, http.ErrServerClosed) {
			m.logger.Error("admin listener stopped", "address", m.adminAddr, "error", err)
		}
	}()
	m.closers = append(m.closers, func() error {
		err := srv.Close()
		<-done
		if scraper != nil {
			scraper.CloseIdleConnections()
		}
		return err
	})
	return nil
}

// clusterStatus is /debug/clusters: every cluster the mesh's gRPC channels
// and HTTP client route to, with its endpoints' connection state, outlier
// ejection and requests in flight.
func (m *Mesh) clusterStatus() []admin.ClusterStatus {
	var out []admin.ClusterStatus
	for _, c := range append(m.resolver.ClusterStates(), m.httpRouter.ClusterStates()...) {
		cs := admin.ClusterStatus{Channel: c.Channel, Name: c.Name, InFlight: c.InFlight}
		for _, e := range c.Endpoints {
			cs.Endpoints = append(cs.Endpoints, admin.EndpointStatus{
				Address: e.Address, Locality: e.Locality, Weight: e.Weight, Health: e.Health,
				Ejected: e.Ejected, EjectedUntil: e.EjectedUntil, InFlight: e.InFlight,
			})
		}
		out = append(out, cs)
	}
	return out
}
