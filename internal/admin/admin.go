package admin

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"strings"
	"time"
)

// Config says what the admin handler serves. Every field may be nil; its
// page then answers 404.
type Config struct {
	// Metrics serves /metrics, e.g. promhttp.HandlerFor(registry, ...).
	Metrics http.Handler
	// XDS lists the watched xDS resources for /debug/config, e.g. the mesh's
	// xdsclient.Client.Dump converted by package xdsview (kept apart so
	// that the control plane's graph page does not pull in xdsclient).
	XDS func() []ResourceView
	// Certificates lists the workload's certificates in force (never
	// keys) for /debug/config.
	Certificates func() []CertificateView
	// Clusters lists clusters and their endpoints for /debug/clusters.
	Clusters func() []ClusterStatus
	// Graph computes /debug/graph.json, drawn by /debug/graph.
	Graph GraphSource
	// Tap serves /debug/tap: every request's access log record, live
	// (package tapview builds it, kept apart so that the control plane
	// does not pull in telemetry).
	Tap http.Handler
	// Healthy answers /healthz: nil means serving. A nil func always
	// answers ok.
	Healthy func() error
	// Logger logs failures to build a page (default: discard).
	Logger *slog.Logger
}

// ClusterStatus is one upstream cluster as the client's balancer sees it.
type ClusterStatus struct {
	// Channel is the target ("host:port") whose routes use the cluster.
	Channel string `json:"channel,omitempty"`
	Name    string `json:"name"`
	// InFlight counts the requests outstanding to the cluster (what circuit
	// breaking limits).
	InFlight  int64            `json:"in_flight"`
	Endpoints []EndpointStatus `json:"endpoints"`
}

// EndpointStatus is one endpoint of a cluster.
type EndpointStatus struct {
	Address  string `json:"address"`
	Locality string `json:"locality,omitempty"`
	Weight   uint32 `json:"weight,omitempty"`
	// Health is the state of the connection to the endpoint: "READY",
	// "CONNECTING", "TRANSIENT_FAILURE" or "IDLE" (only endpoints EDS calls
	// healthy are connected to at all).
	Health string `json:"health"`
	// Ejected is set while outlier detection keeps the endpoint out of
	// rotation, until EjectedUntil.
	Ejected      bool      `json:"ejected"`
	EjectedUntil time.Time `json:"ejected_until,omitzero"`
	InFlight     int64     `json:"in_flight"`
}

// ResourceView is one xDS resource as /debug/config shows it.
type ResourceView struct {
	Type    string `json:"type"`
	TypeURL string `json:"type_url"`
	Name    string `json:"name"`
	Version string `json:"version"`
	// Status is "ACK", "NACK", "DOES_NOT_EXIST" or "REQUESTED".
	Status        string    `json:"status"`
	Error         string    `json:"error,omitempty"`
	IgnoredFields []string  `json:"ignored_fields,omitempty"`
	UpdatedAt     time.Time `json:"updated_at,omitzero"`
	Source        string    `json:"source,omitempty"`
	FromCache     bool      `json:"from_cache,omitempty"`
	// Config is what is in force: a ListenerConfig, RouteConfigView,
	// ClusterConfig, EndpointsConfig or SecretConfig.
	Config any `json:"config,omitempty"`
}

// graphTimeout bounds one graph computation: scrapes of slow targets.
const graphTimeout = 10 * time.Second

// NewHandler returns the admin handler: /metrics, /debug/config,
// /debug/clusters, /debug/graph, /debug/graph.json and /healthz, and an
// index at /.
func NewHandler(cfg Config) http.Handler {
	logger := cfg.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	mux := http.NewServeMux()
	index := indexPage(cfg)
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_, _ = w.Write(index)
	})
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		if cfg.Healthy != nil {
			if err := cfg.Healthy(); err != nil {
				http.Error(w, "not serving: "+err.Error(), http.StatusServiceUnavailable)
				return
			}
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	if cfg.Metrics != nil {
		mux.Handle("GET /metrics", cfg.Metrics)
	} else {
		mux.HandleFunc("GET /metrics", notConfigured("metrics"))
	}
	mux.HandleFunc("GET /debug/config", func(w http.ResponseWriter, _ *http.Request) {
		if cfg.XDS == nil {
			notConfigured("xds config")(w, nil)
			return
		}
		page := map[string]any{"resources": cfg.XDS()}
		if cfg.Certificates != nil {
			certs := cfg.Certificates()
			if certs == nil {
				certs = []CertificateView{}
			}
			page["certificates"] = certs
		}
		writeJSON(w, logger, "/debug/config", page)
	})
	mux.HandleFunc("GET /debug/clusters", func(w http.ResponseWriter, _ *http.Request) {
		if cfg.Clusters == nil {
			notConfigured("clusters")(w, nil)
			return
		}
		clusters := cfg.Clusters()
		if clusters == nil {
			clusters = []ClusterStatus{}
		}
		writeJSON(w, logger, "/debug/clusters", map[string]any{"clusters": clusters})
	})
	if cfg.Tap != nil {
		mux.Handle("GET /debug/tap", cfg.Tap)
	} else {
		mux.HandleFunc("GET /debug/tap", notConfigured("tap"))
	}
	mux.HandleFunc("GET /debug/graph", func(w http.ResponseWriter, _ *http.Request) {
		if cfg.Graph == nil {
			notConfigured("graph")(w, nil)
			return
		}
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		_, _ = w.Write([]byte(graphHTML))
	})
	mux.HandleFunc("GET /debug/graph.json", func(w http.ResponseWriter, r *http.Request) {
		if cfg.Graph == nil {
			notConfigured("graph")(w, nil)
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), graphTimeout)
		defer cancel()
		g, err := cfg.Graph.Graph(ctx)
		if err != nil {
			logger.Warn("admin: building graph", "error", err)
			http.Error(w, "building graph: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		writeJSON(w, logger, "/debug/graph.json", g)
	})
	return mux
}

func notConfigured(what string) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		http.Error(w, fmt.Sprintf("%s: %v", what, errNotConfigured), http.StatusNotFound)
	}
}

func writeJSON(w http.ResponseWriter, logger *slog.Logger, page string, v any) {
	body, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		logger.Error("admin: encoding page", "page", page, "error", err)
		http.Error(w, "encoding "+page+": "+err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = w.Write(append(body, '\n'))
}

// indexPage links the pages cfg configures, and no page that would answer
// "not configured".
func indexPage(cfg Config) []byte {
	var b strings.Builder
	b.WriteString(`<!doctype html>
<html><head><meta charset="utf-8"><title>mesh admin</title></head>
<body><h1>mesh admin</h1><ul>
`)
	if cfg.Metrics != nil {
		b.WriteString(`<li><a href="metrics">/metrics</a></li>` + "\n")
	}
	if cfg.XDS != nil {
		b.WriteString(`<li><a href="debug/config">/debug/config</a></li>` + "\n")
	}
	if cfg.Clusters != nil {
		b.WriteString(`<li><a href="debug/clusters">/debug/clusters</a></li>` + "\n")
	}
	if cfg.Graph != nil {
		b.WriteString(`<li><a href="debug/graph">/debug/graph</a> (<a href="debug/graph.json">json</a>)</li>` + "\n")
	}
	if cfg.Tap != nil {
		// A bounded stream: the link ends after a few seconds.
		b.WriteString(`<li><a href="debug/tap?duration=2s">/debug/tap</a> (live requests, as meshctl tap shows them)</li>` + "\n")
	}
	b.WriteString(`<li><a href="healthz">/healthz</a></li>
</ul></body></html>`)
	return []byte(b.String())
}
