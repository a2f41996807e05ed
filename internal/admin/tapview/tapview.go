// Package tapview streams a workload's access log records for the admin
// pages' /debug/tap, apart from package admin so that the control plane,
// which serves admin pages too, does not link telemetry.
package tapview

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc/codes"

	"mesh/telemetry"
)

// Record is one request as /debug/tap streams it: one JSON object per
// line. It carries no header: nothing a credential travels in (the
// Authorization header, cookies, a URL's query) reaches it.
type Record struct {
	Time      time.Time `json:"time"`
	Direction string    `json:"direction"` // "inbound" (served) or "outbound" (sent)
	Protocol  string    `json:"protocol"`  // "grpc" or "http"
	Method    string    `json:"method"`
	Path      string    `json:"path"` // without the query
	Authority string    `json:"authority,omitempty"`
	// Status is the gRPC status name for gRPC, the HTTP status code
	// otherwise ("0" when no response came).
	Status         string  `json:"status"`
	HTTPStatus     int     `json:"http_status"`
	DurationMillis float64 `json:"duration_ms"`
	// Peer is the other side's verified SPIFFE ID, if any.
	Peer     string `json:"peer,omitempty"`
	Upstream string `json:"upstream,omitempty"` // cluster and endpoint (outbound) or inbound cluster
	Flags    string `json:"flags,omitempty"`    // Envoy response flags, "-" for none
	TraceID  string `json:"trace_id,omitempty"`
	// DroppedBefore counts the requests this stream lost before this
	// record because its reader did not keep up.
	DroppedBefore uint64 `json:"dropped_before,omitempty"`
}

// RecordOf converts an access log entry to the record /debug/tap
// streams.
func RecordOf(e telemetry.Entry) Record {
	r := Record{
		Time: e.StartTime.UTC(), Direction: "outbound", Protocol: "http", Method: e.Method,
		Path: e.Path, Authority: e.Authority, Status: strconv.Itoa(e.ResponseCode), HTTPStatus: e.ResponseCode,
		DurationMillis: float64(e.Duration.Microseconds()) / 1000, Peer: e.PeerPrincipal,
		Upstream: strings.Trim(e.UpstreamCluster+" "+e.UpstreamHost, " "), Flags: e.ResponseFlags, TraceID: e.TraceID,
	}
	if e.Inbound {
		r.Direction = "inbound"
	}
	// A path never carries a query here, but a caller's own Entry might.
	r.Path, _, _ = strings.Cut(r.Path, "?")
	// userinfo@host is a credential too.
	if i := strings.LastIndexByte(r.Authority, '@'); i >= 0 {
		r.Authority = r.Authority[i+1:]
	}
	if e.GRPCStatus != "" {
		r.Protocol = "grpc"
		r.Status = e.GRPCStatus
		if n, err := strconv.ParseUint(e.GRPCStatus, 10, 32); err == nil {
			r.Status = codes.Code(n).String()
		}
	}
	return r
}

// Bounds of one /debug/tap stream, which ends after n records or the
// duration, whichever comes first.
const (
	tapDefaultCount    = 100
	tapMaxCount        = 100000
	tapDefaultDuration = 30 * time.Second
	tapMaxDuration     = 10 * time.Minute
	tapBuffer          = 1024
)

// Handler streams the tap's records as NDJSON: GET
// /debug/tap?n=COUNT&duration=DURATION.
func Handler(tap *telemetry.Tap, logger *slog.Logger) http.Handler {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, duration := tapDefaultCount, tapDefaultDuration
		if v := r.URL.Query().Get("n"); v != "" {
			c, err := strconv.Atoi(v)
			if err != nil || c < 1 || c > tapMaxCount {
				http.Error(w, fmt.Sprintf("n %q: want 1..%d", v, tapMaxCount), http.StatusBadRequest)
				return
			}
			n = c
		}
		if v := r.URL.Query().Get("duration"); v != "" {
			d, err := time.ParseDuration(v)
			if err != nil || d <= 0 || d > tapMaxDuration {
				http.Error(w, fmt.Sprintf("duration %q: want (0, %v]", v, tapMaxDuration), http.StatusBadRequest)
				return
			}
			duration = d
		}
		sub, err := tap.Subscribe(min(n, tapBuffer))
		if err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		defer sub.Close()
		ctx, cancel := context.WithTimeout(r.Context(), duration)
		defer cancel()
		w.Header().Set("Content-Type", "application/x-ndjson")
		w.Header().Set("Cache-Control", "no-store")
		w.WriteHeader(http.StatusOK)
		rc := http.NewResponseController(w)
		_ = rc.Flush() // the reader knows it is tapping before any request
		enc := json.NewEncoder(w)
		var reported uint64
		for sent := 0; sent < n; sent++ {
			select {
			case <-ctx.Done():
				return
			case e := <-sub.Entries():
				rec := RecordOf(e)
				if d := sub.Dropped(); d > reported {
					rec.DroppedBefore, reported = d-reported, d
				}
				if err := enc.Encode(rec); err != nil {
					logger.Debug("admin: tap reader gone", "error", err)
					return
				}
				_ = rc.Flush()
			}
		}
	})
}
