package mesh

import (
	"time"

	"mesh/transport"
)

// Limits a mesh server applies by default, close to Envoy's, so that a
// proxyless server is no easier to exhaust than a sidecar.
const (
	// DefaultMaxHeaderBytes bounds a request's headers (Envoy's
	// max_request_headers_kb is 60).
	DefaultMaxHeaderBytes = 60 << 10
	// DefaultMaxConcurrentStreams bounds the calls in flight on one
	// HTTP/2 connection.
	DefaultMaxConcurrentStreams = 1000
	// DefaultReadHeaderTimeout bounds how long an HTTP server waits for a
	// request's headers, so that a client dripping them cannot hold a
	// connection.
	DefaultReadHeaderTimeout = 10 * time.Second
	// DefaultIdleTimeout closes HTTP connections idle this long (Envoy's
	// idle_timeout default).
	DefaultIdleTimeout = time.Hour
	// DefaultDrainPeriod is how long a connection whose filter chain
	// changed may finish its calls after GOAWAY before it is closed
	// (Envoy's drain_timeout).
	DefaultDrainPeriod = 5 * time.Second
)

// limits are the server limits in force; see the options below.
type limits struct {
	maxHeaderBytes       int
	maxConcurrentStreams uint32
	readHeaderTimeout    time.Duration
	idleTimeout          time.Duration
	drainPeriod          time.Duration
	pathNormalization    PathNormalization
}

func defaultLimits() limits {
	return limits{
		maxHeaderBytes:       DefaultMaxHeaderBytes,
		maxConcurrentStreams: DefaultMaxConcurrentStreams,
		readHeaderTimeout:    DefaultReadHeaderTimeout,
		idleTimeout:          DefaultIdleTimeout,
		drainPeriod:          DefaultDrainPeriod,
	}
}

// WithMaxHeaderBytes bounds the headers of a request to a mesh server and
// of a response to a mesh gRPC client (default DefaultMaxHeaderBytes);
// larger requests are refused (431 on HTTP/1.1, RST_STREAM on HTTP/2).
func WithMaxHeaderBytes(n int) Option {
	return optionFunc(func(o *options) {
		if n > 0 {
			o.limits.maxHeaderBytes = n
		}
	})
}

// WithMaxConcurrentStreams bounds the calls in flight on one connection to
// a mesh server (default DefaultMaxConcurrentStreams).
func WithMaxConcurrentStreams(n uint32) Option {
	return optionFunc(func(o *options) {
		if n > 0 {
			o.limits.maxConcurrentStreams = n
		}
	})
}

// WithReadHeaderTimeout bounds how long a mesh HTTP server waits for a
// request's headers (default DefaultReadHeaderTimeout).
func WithReadHeaderTimeout(d time.Duration) Option {
	return optionFunc(func(o *options) {
		if d > 0 {
			o.limits.readHeaderTimeout = d
		}
	})
}

// WithIdleTimeout closes a mesh HTTP server's keep-alive connections idle
// this long (default DefaultIdleTimeout).
func WithIdleTimeout(d time.Duration) Option {
	return optionFunc(func(o *options) {
		if d > 0 {
			o.limits.idleTimeout = d
		}
	})
}

// WithDrainPeriod sets how long a server connection may finish its calls
// once the filter chain it was accepted under changed or went (for example
// PERMISSIVE to STRICT for a plaintext client): new calls on it are
// refused at once, GOAWAY is sent, and it is closed when the period ends
// (default DefaultDrainPeriod; gRFC A36's graceful close).
func WithDrainPeriod(d time.Duration) Option {
	return optionFunc(func(o *options) {
		if d > 0 {
			o.limits.drainPeriod = d
		}
	})
}

// PathNormalization is the least normalization mesh servers apply to HTTP
// request paths before authorization and handlers see them; see
// transport.PathNormalization.
type PathNormalization = transport.PathNormalization

// Path normalization levels, as Istio's meshConfig.pathNormalization names
// them.
const (
	PathNormalizationBase                  = transport.PathNormalizationBase
	PathNormalizationMergeSlashes          = transport.PathNormalizationMergeSlashes
	PathNormalizationDecodeAndMergeSlashes = transport.PathNormalizationDecodeAndMergeSlashes
)

// WithPathNormalization sets the least path normalization of HTTP requests
// to mesh servers (default PathNormalizationBase), whatever the listener
// resource says: istiod does not send Envoy's normalization fields to
// proxyless workloads, so this is how a mesh under istiod gets
// MERGE_SLASHES or DECODE_AND_MERGE_SLASHES. The embedded control plane's
// controlplane.WithPathNormalization sets it in the listener instead.
func WithPathNormalization(p PathNormalization) Option {
	return optionFunc(func(o *options) { o.limits.pathNormalization = p })
}
