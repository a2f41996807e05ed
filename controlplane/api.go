package controlplane

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"
)

// The daemon's HTTP API, which meshctl uses. Every request carries
// "Authorization: Bearer <token>", the token in the state directory's
// api-token file: the API enrolls workloads, which is handing out
// identities, so it is as closed as the CA key. It listens where
// DaemonConfig.APIAddress says; keep that on loopback.
//
//	GET  /api/v1/status                         DaemonStatus
//	GET  /api/v1/proxy-status                   []ProxyStatus
//	GET  /api/v1/top?window=5s                  []EdgeStats
//	POST /api/v1/enroll                         EnrollRequest -> EnrollResponse
//	GET  /api/v1/canaries/{host}                CanaryStatus
//	POST /api/v1/canaries/{host}/weights        {"weights": {"v1": 90, "v2": 10}}
//	POST /api/v1/canaries/{host}/promote        {"subset": "v2"} (optional)
//	POST /api/v1/canaries/{host}/rollback       {"subset": "v1"} (optional)
//	POST /api/v1/canaries/{host}/analysis       Canary: start an analysis
//	POST /api/v1/canaries/{host}/analyze-now    end the interval now
//	POST /api/v1/canaries/{host}/release        the config dir's weights rule again
//
// Errors are {"error": "..."} with a 4xx status.

// DaemonStatus is the daemon's state as the API reports it.
//
// # Experimental
type DaemonStatus struct {
	XDSAddress  string         `json:"xds_address"`
	ConfigDir   string         `json:"config_dir"`
	AdminURL    string         `json:"admin_url,omitempty"` // the graph and admin pages, if served
	ConfigError string         `json:"config_error,omitempty"`
	AppliedAt   time.Time      `json:"applied_at"`
	Workloads   []Enrollment   `json:"workloads"`
	Canaries    []CanaryStatus `json:"canaries"`
	// Findings are analyze's, on the configuration in force and the
	// workloads known now.
	Findings []Finding `json:"findings"`
}

// EnrollRequest asks the API to enroll a workload whose files will live in
// Dir (absolute: the bootstrap names its files there).
type EnrollRequest struct {
	Enrollment
	Dir string `json:"dir"`
}

// EnrollResponse carries the files of the workload's bootstrap directory.
type EnrollResponse struct {
	Files map[string][]byte `json:"files"`
}

type apiServer struct {
	url string
	srv *http.Server
	wg  sync.WaitGroup
}

func (a *apiServer) close() {
	_ = a.srv.Close()
	a.wg.Wait()
}

// Status reports the daemon's configuration state, enrollments and canaries.
func (d *Daemon) Status() DaemonStatus {
	d.mu.Lock()
	st := DaemonStatus{XDSAddress: d.srv.Addr(), ConfigDir: d.cfg.ConfigDir, ConfigError: d.configErr, AdminURL: d.adminURL,
		AppliedAt: d.appliedAt.UTC(), Workloads: []Enrollment{}, Canaries: []CanaryStatus{}}
	for _, k := range slices.Sorted(maps.Keys(d.enrolled)) {
		st.Workloads = append(st.Workloads, d.enrolled[k])
	}
	hosts := slices.Sorted(maps.Keys(d.canaries))
	d.mu.Unlock()
	st.Findings = append([]Finding{}, d.srv.Findings()...)
	for _, h := range hosts {
		if c, err := d.CanaryStatus(h); err == nil {
			st.Canaries = append(st.Canaries, c)
		}
	}
	return st
}

func (d *Daemon) serveAPI(ctx context.Context) (*apiServer, error) {
	lis, err := (&net.ListenConfig{}).Listen(ctx, "tcp", d.cfg.APIAddress)
	if err != nil {
		return nil, fmt.Errorf("api listen on %q: %w", d.cfg.APIAddress, err)
	}
	// The API hands out keys over plain HTTP: loopback only.
	if tcp, ok := lis.Addr().(*net.TCPAddr); !ok || !tcp.IP.IsLoopback() {
		lis.Close()
		return nil, fmt.Errorf("api address %q: not a loopback address; the API carries keys over plain HTTP", d.cfg.APIAddress)
	}
	a := &apiServer{url: "http://" + lis.Addr().String()}
	if err := writeFileAtomic(filepath.Join(d.cfg.StateDir, StateAPIAddressFile), []byte(a.url+"\n"), 0o600); err != nil {
		lis.Close()
		return nil, err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/v1/status", func(w http.ResponseWriter, r *http.Request) {
		writeAPI(w, http.StatusOK, d.Status())
	})
	mux.HandleFunc("GET /api/v1/proxy-status", func(w http.ResponseWriter, r *http.Request) {
		writeAPI(w, http.StatusOK, append([]ProxyStatus{}, d.srv.ProxyStatus()...))
	})
	mux.HandleFunc("GET /api/v1/top", func(w http.ResponseWriter, r *http.Request) {
		window, err := time.ParseDuration(cmpOr(r.URL.Query().Get("window"), "5s"))
		if err != nil {
			apiError(w, http.StatusBadRequest, fmt.Errorf("window: %w", err))
			return
		}
		edges, err := d.Top(r.Context(), window)
		if err != nil {
			apiError(w, http.StatusBadRequest, err)
			return
		}
		writeAPI(w, http.StatusOK, append([]EdgeStats{}, edges...))
	})
	mux.HandleFunc("POST /api/v1/enroll", func(w http.ResponseWriter, r *http.Request) {
		var req EnrollRequest
		if !readAPI(w, r, &req) {
			return
		}
		files, err := d.Enroll(req.Enrollment, req.Dir)
		if err != nil {
			apiError(w, http.StatusBadRequest, err)
			return
		}
		writeAPI(w, http.StatusOK, EnrollResponse{Files: files})
	})
	mux.HandleFunc("GET /api/v1/canaries/{host}", func(w http.ResponseWriter, r *http.Request) {
		st, err := d.CanaryStatus(r.PathValue("host"))
		if err != nil {
			apiError(w, http.StatusNotFound, err)
			return
		}
		writeAPI(w, http.StatusOK, st)
	})
	mux.HandleFunc("POST /api/v1/canaries/{host}/{action}", func(w http.ResponseWriter, r *http.Request) {
		host := r.PathValue("host")
		var err error
		switch r.PathValue("action") {
		case "weights":
			var req struct {
				Weights map[string]int `json:"weights"`
			}
			if !readAPI(w, r, &req) {
				return
			}
			err = d.SetWeights(host, req.Weights)
		case "promote", "rollback":
			var req struct {
				Subset string `json:"subset"`
			}
			if !readAPI(w, r, &req) {
				return
			}
			if r.PathValue("action") == "promote" {
				err = d.Promote(host, req.Subset)
			} else {
				err = d.Rollback(host, req.Subset)
			}
		case "analysis":
			var spec Canary
			if !readAPI(w, r, &spec) {
				return
			}
			spec.Host = host
			err = d.StartAnalysis(r.Context(), spec)
		case "release":
			err = d.Release(host)
		case "analyze-now":
			d.AnalyzeNow(r.Context(), host)
		default:
			apiError(w, http.StatusNotFound, fmt.Errorf("unknown canary action %q", r.PathValue("action")))
			return
		}
		if err != nil {
			apiError(w, http.StatusBadRequest, err)
			return
		}
		st, err := d.CanaryStatus(host)
		if err != nil {
			apiError(w, http.StatusNotFound, err)
			return
		}
		writeAPI(w, http.StatusOK, st)
	})
	token := []byte("Bearer " + d.token)
	a.srv = &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if subtle.ConstantTimeCompare([]byte(r.Header.Get("Authorization")), token) != 1 {
				apiError(w, http.StatusUnauthorized, errors.New("missing or wrong API token (see the state dir's api-token)"))
				return
			}
			mux.ServeHTTP(w, r)
		}),
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(d.srv.logger.Handler(), slog.LevelWarn),
	}
	a.wg.Add(1)
	go func() {
		defer a.wg.Done()
		if err := a.srv.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			d.srv.logger.Warn("controlplane: api server stopped", "error", err)
		}
	}()
	return a, nil
}

// maxAPIBody bounds a request body: the largest is an enrollment.
const maxAPIBody = 1 << 20

func readAPI(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, maxAPIBody))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		apiError(w, http.StatusBadRequest, fmt.Errorf("request body: %w", err))
		return false
	}
	return true
}

func writeAPI(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func apiError(w http.ResponseWriter, code int, err error) {
	writeAPI(w, code, map[string]string{"error": strings.TrimSpace(err.Error())})
}

// ServeAdmin serves the server's admin pages (the mesh graph) on addr, as
// Server.ServeAdmin does, and reports their URL in Status.
func (d *Daemon) ServeAdmin(ctx context.Context, addr string) (string, error) {
	u, err := d.srv.ServeAdmin(ctx, addr)
	if err != nil {
		return "", err
	}
	d.mu.Lock()
	d.adminURL = u
	d.mu.Unlock()
	return u, nil
}
