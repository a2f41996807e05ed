package telemetry

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"math"
	"sync"
	"sync/atomic"
	"time"
)

// Entry is one access log record, with the fields of Envoy's default access
// log. Byte counts are from the request's point of view, as Envoy reports
// them on both inbound and outbound sides: BytesReceived is the request
// body, BytesSent the response body.
type Entry struct {
	StartTime time.Time
	// Inbound is true for requests a server handled, false for those a
	// client sent.
	Inbound       bool
	Method        string // "POST" for gRPC
	Path          string // "/package.Service/Method" for gRPC
	Protocol      string // "HTTP/2", "HTTP/1.1"
	Authority     string
	ResponseCode  int    // HTTP status; 200 for gRPC, 0 when no response came
	GRPCStatus    string // numeric gRPC status; "" for plain HTTP
	ResponseFlags string // Envoy response flags; "-" for none
	Duration      time.Duration
	// UpstreamCluster and UpstreamHost name where the request went: the
	// router's cluster and endpoint on a client; "inbound|<port>||" and the
	// local address on a server.
	UpstreamCluster string
	UpstreamHost    string
	BytesReceived   int64
	BytesSent       int64
	// PeerPrincipal is the verified SPIFFE ID of the other side, if any.
	PeerPrincipal string
	RequestID     string
	TraceID       string
}

// AccessLogConfig chooses which requests WithAccessLog logs.
type AccessLogConfig struct {
	// Filter, when set, logs only the entries it returns true for.
	Filter func(Entry) bool
	// SampleRate is the fraction of requests logged, in [0, 1]; 0 means
	// all of them. Sampling is decided by the request's x-request-id, so
	// every hop of a request makes the same choice.
	SampleRate float64
}

// Validate reports a SampleRate outside [0, 1].
func (c AccessLogConfig) Validate() error {
	if math.IsNaN(c.SampleRate) || c.SampleRate < 0 || c.SampleRate > 1 {
		return fmt.Errorf("telemetry: access log config: SampleRate %v is outside [0, 1]", c.SampleRate)
	}
	return nil
}

// sampled reports whether the request with requestID is logged.
func (c AccessLogConfig) sampled(requestID string) bool {
	if c.SampleRate == 0 || c.SampleRate >= 1 {
		return true
	}
	h := fnv.New64a()
	_, _ = h.Write([]byte(requestID))
	// FNV's high bits barely change between IDs that differ at the end;
	// a splitmix64 finish spreads every input bit before the top 53 bits
	// become a fraction in [0, 1).
	x := h.Sum64()
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	x ^= x >> 31
	return float64(x>>11)/(1<<53) < c.SampleRate
}

func (c *core) writeAccessLog(ctx context.Context, ex *exchange) {
	tapped := c.tap.active()
	if c.accessLogger == nil && !tapped {
		return
	}
	logged := c.accessLogger != nil && c.accessLog.sampled(ex.requestID)
	if !logged && !tapped {
		return
	}
	e := Entry{
		StartTime:     ex.start,
		Inbound:       !c.client,
		Method:        ex.method,
		Path:          ex.path,
		Protocol:      ex.httpProtocol,
		Authority:     ex.authority,
		ResponseCode:  ex.responseCode,
		GRPCStatus:    ex.grpcStatus,
		ResponseFlags: ex.flags,
		Duration:      ex.duration,
		BytesReceived: ex.requestBytes,
		BytesSent:     ex.responseBytes,
		PeerPrincipal: ex.peerPrincipal,
		RequestID:     ex.requestID,
		TraceID:       ex.traceID(),
	}
	if c.client {
		e.UpstreamCluster = ex.route.Cluster
		if e.UpstreamCluster == "" {
			e.UpstreamCluster = c.destinationService(ex)
		}
		e.UpstreamHost = ex.route.Endpoint
		if e.UpstreamHost == "" {
			e.UpstreamHost = ex.remoteString()
		}
	} else {
		e.UpstreamHost = ex.localString()
		if _, port, ok := splitHostPort(e.UpstreamHost); ok {
			e.UpstreamCluster = fmt.Sprintf("inbound|%d||", port)
		}
	}
	if tapped {
		c.tap.publish(e) // every request, whatever the log's sampling and filter
	}
	if !logged {
		return
	}
	if f := c.accessLog.Filter; f != nil && !f(e) {
		return
	}
	c.accessLogger.LogAttrs(ctx, slog.LevelInfo, "access", e.attrs()...)
}

// attrs returns the entry as slog attributes named like the fields of
// Istio's JSON access log.
func (e Entry) attrs() []slog.Attr {
	direction := "outbound"
	if e.Inbound {
		direction = "inbound"
	}
	return []slog.Attr{
		slog.String("start_time", e.StartTime.UTC().Format("2006-01-02T15:04:05.000Z07:00")),
		slog.String("direction", direction),
		slog.String("method", e.Method),
		slog.String("path", e.Path),
		slog.String("protocol", e.Protocol),
		slog.String("authority", e.Authority),
		slog.Int("response_code", e.ResponseCode),
		slog.String("grpc_status", e.GRPCStatus),
		slog.String("response_flags", e.ResponseFlags),
		slog.Int64("duration", e.Duration.Milliseconds()),
		slog.String("upstream_cluster", e.UpstreamCluster),
		slog.String("upstream_host", e.UpstreamHost),
		slog.Int64("bytes_received", e.BytesReceived),
		slog.Int64("bytes_sent", e.BytesSent),
		slog.String("peer_principal", e.PeerPrincipal),
		slog.String("request_id", e.RequestID),
		slog.String("trace_id", e.TraceID),
	}
}

// Tap fans the access log's entries out to live subscribers, such as the
// admin pages' /debug/tap that meshctl tap reads: every request, whether
// or not an access logger is set, samples or filters it. A subscriber
// that does not keep up loses entries, counted, and never slows a
// request; with no subscriber a request pays one atomic load. Its zero
// value is not usable: call NewTap, and pass it to WithTap.
//
// # Experimental
type Tap struct {
	mu   sync.Mutex                         // serializes Subscribe and Close
	subs atomic.Pointer[[]*TapSubscription] // immutable; nil when none
}

// TapSubscription receives a Tap's entries until Close.
type TapSubscription struct {
	tap     *Tap
	entries chan Entry
	dropped atomic.Uint64
}

// Bounds of a Tap: its subscribers and each one's buffer.
const (
	MaxTapSubscribers = 16
	MaxTapBuffer      = 4096
)

// ErrTapBusy is returned by Subscribe when MaxTapSubscribers are tapping.
var ErrTapBusy = errors.New("telemetry: tap: too many subscribers")

// NewTap returns a Tap without subscribers.
func NewTap() *Tap { return &Tap{} }

// WithTap publishes every request's access log entry to t's subscribers.
func WithTap(t *Tap) Option {
	return optionFunc(func(c *config) { c.tap = t })
}

// Subscribe starts a subscription buffering up to buffer entries (1 to
// MaxTapBuffer; out of range values are clamped).
func (t *Tap) Subscribe(buffer int) (*TapSubscription, error) {
	buffer = min(max(buffer, 1), MaxTapBuffer)
	t.mu.Lock()
	defer t.mu.Unlock()
	var cur []*TapSubscription
	if p := t.subs.Load(); p != nil {
		cur = *p
	}
	if len(cur) >= MaxTapSubscribers {
		return nil, ErrTapBusy
	}
	s := &TapSubscription{tap: t, entries: make(chan Entry, buffer)}
	next := append(append(make([]*TapSubscription, 0, len(cur)+1), cur...), s)
	t.subs.Store(&next)
	return s, nil
}

// Entries delivers the entries. It is never closed: stop reading after
// Close.
func (s *TapSubscription) Entries() <-chan Entry { return s.entries }

// Dropped counts the entries lost because the buffer was full.
func (s *TapSubscription) Dropped() uint64 { return s.dropped.Load() }

// Close ends the subscription; calling it again does nothing.
func (s *TapSubscription) Close() {
	t := s.tap
	t.mu.Lock()
	defer t.mu.Unlock()
	p := t.subs.Load()
	if p == nil {
		return
	}
	var next []*TapSubscription
	for _, o := range *p {
		if o != s {
			next = append(next, o)
		}
	}
	if len(next) == 0 {
		t.subs.Store(nil)
		return
	}
	t.subs.Store(&next)
}

func (t *Tap) active() bool { return t != nil && t.subs.Load() != nil }

func (t *Tap) publish(e Entry) {
	p := t.subs.Load()
	if p == nil {
		return
	}
	for _, s := range *p {
		select {
		case s.entries <- e:
		default:
			s.dropped.Add(1)
		}
	}
}
