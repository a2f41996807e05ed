package controlplane

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	networking "istio.io/api/networking/v1alpha3"

	"mesh/internal/admin"
)

// operations is the control plane's admin side: the /metrics URLs workloads
// registered and the admin HTTP servers it runs. Its zero value is ready;
// Server.Close stops the servers.
type operations struct {
	mu       sync.Mutex
	closed   bool
	metrics  map[string]string // workload -> /metrics URL
	servers  []*http.Server
	scrapers []*admin.Scraper // to close their idle connections
	wg       sync.WaitGroup
}

// RegisterMetricsEndpoint records the Prometheus /metrics URL a workload
// serves, for the whole-mesh graph. Registering a workload again replaces
// its URL; an empty url removes it.
func (s *Server) RegisterMetricsEndpoint(workload, metricsURL string) error {
	if workload == "" {
		return errors.New("register metrics endpoint: workload: empty")
	}
	ops := &s.ops
	ops.mu.Lock()
	defer ops.mu.Unlock()
	if metricsURL == "" {
		delete(ops.metrics, workload)
		return nil
	}
	u, err := url.Parse(metricsURL)
	if err != nil {
		return fmt.Errorf("register metrics endpoint for %q: url: %w", workload, err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return fmt.Errorf("register metrics endpoint for %q: url %q: want http(s)://host:port/path", workload, metricsURL)
	}
	if ops.metrics == nil {
		ops.metrics = map[string]string{}
	}
	ops.metrics[workload] = metricsURL
	return nil
}

// MetricsEndpoints returns the registered /metrics URLs by workload.
func (s *Server) MetricsEndpoints() map[string]string {
	s.ops.mu.Lock()
	defer s.ops.mu.Unlock()
	return maps.Clone(s.ops.metrics)
}

// metricsURLs lists the registered URLs, sorted by workload.
func (s *Server) metricsURLs() []string {
	s.ops.mu.Lock()
	defer s.ops.mu.Unlock()
	var out []string
	for _, w := range slices.Sorted(maps.Keys(s.ops.metrics)) {
		out = append(out, s.ops.metrics[w])
	}
	return out
}

// AdminHandler serves the whole mesh's service graph (/debug/graph and
// /debug/graph.json), built by scraping every registered metrics endpoint,
// plus /healthz.
//
// # Experimental
func (s *Server) AdminHandler() http.Handler {
	// No keep-alive: nothing would close the idle connections of a handler
	// the caller serves itself.
	client := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	return admin.NewHandler(admin.Config{
		Graph:  weightedGraph{s, admin.NewScraper(s.metricsURLs, admin.WithLogger(s.logger), admin.WithHTTPClient(client))},
		Logger: s.logger,
	})
}

// ServeAdmin serves AdminHandler on addr (e.g. "127.0.0.1:0") until Close
// and returns its base URL, e.g. "http://127.0.0.1:41234". ctx bounds the
// listen only.
//
// # Experimental
func (s *Server) ServeAdmin(ctx context.Context, addr string) (string, error) {
	lis, err := (&net.ListenConfig{}).Listen(ctx, "tcp", addr)
	if err != nil {
		return "", fmt.Errorf("admin listen on %q: %w", addr, err)
	}
	scraper := admin.NewScraper(s.metricsURLs, admin.WithLogger(s.logger))
	srv := &http.Server{
		Handler:  admin.NewHandler(admin.Config{Graph: weightedGraph{s, scraper}, Logger: s.logger}),
		ErrorLog: slog.NewLogLogger(s.logger.Handler(), slog.LevelWarn),
	}
	ops := &s.ops
	ops.mu.Lock()
	if ops.closed {
		ops.mu.Unlock()
		_ = lis.Close()
		return "", fmt.Errorf("admin: %w", ErrClosed)
	}
	ops.servers = append(ops.servers, srv)
	ops.scrapers = append(ops.scrapers, scraper)
	ops.wg.Add(1)
	ops.mu.Unlock()
	go func() {
		defer ops.wg.Done()
		if err := srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.logger.Warn("controlplane: admin server stopped", "addr", lis.Addr().String(), "error", err)
		}
	}()
	return "http://" + lis.Addr().String(), nil
}

// close stops the admin servers and waits for them.
func (ops *operations) close() {
	ops.mu.Lock()
	ops.closed = true
	servers, scrapers := ops.servers, ops.scrapers
	ops.servers, ops.scrapers = nil, nil
	ops.mu.Unlock()
	for _, srv := range servers {
		_ = srv.Close()
	}
	ops.wg.Wait()
	for _, sc := range scrapers {
		sc.CloseIdleConnections()
	}
}

// weightedGraph is the scraped graph with each edge's route weight: the
// control plane knows the routes it serves, the metrics do not.
type weightedGraph struct {
	s       *Server
	scraper *admin.Scraper
}

func (w weightedGraph) Graph(ctx context.Context) (admin.Graph, error) {
	g, err := w.scraper.Graph(ctx)
	if err != nil {
		return g, err
	}
	weights := w.s.routeWeights()
	for i, e := range g.Edges {
		if v, ok := weights[e.Target]; ok {
			g.Edges[i].Weight = &v
		}
	}
	return g, nil
}

// routeWeights maps the node ID ("namespace/service/version") of each
// version a weighted route in force sends to, to its percent: from the
// first HTTP route of each VirtualService that routes to one host only,
// a subset's version being its DestinationRule's "version" label, as
// Istio's metrics report it.
func (s *Server) routeWeights() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	versions := map[string]string{} // host|subset -> version
	for _, o := range s.cfg.sorted(KindDestinationRule) {
		dr := o.spec.(*networking.DestinationRule)
		for _, sub := range dr.GetSubsets() {
			versions[QualifyHost(dr.GetHost(), o.key.namespace)+"|"+sub.GetName()] = cmpOr(sub.GetLabels()["version"], sub.GetName())
		}
	}
	out := map[string]int{}
	for _, o := range s.cfg.sorted(KindVirtualService) {
		routes := o.spec.(*networking.VirtualService).GetHttp()
		if len(routes) == 0 {
			continue
		}
		dests := routes[0].GetRoute()
		if len(dests) == 0 {
			continue
		}
		host := QualifyHost(dests[0].GetDestination().GetHost(), o.key.namespace)
		if !routesOnlyTo(dests, host, o.key.namespace) {
			continue
		}
		// host is service.namespace.svc.<domain>.
		parts := strings.SplitN(host, ".", 3)
		if len(parts) < 3 {
			continue
		}
		for _, d := range dests {
			subset := d.GetDestination().GetSubset()
			version, ok := versions[host+"|"+subset]
			if subset == "" || !ok {
				continue // all versions: no one version's weight
			}
			weight := int(d.GetWeight())
			if len(dests) == 1 && weight == 0 {
				weight = 100
			}
			out[admin.NodeID(parts[1], parts[0], version)] += weight
		}
	}
	return out
}
