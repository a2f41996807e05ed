package xdsclient

import (
	"log/slog"
	"math"
	"math/rand/v2"
	"time"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/metric"
)

// Option configures a Client.
type Option interface{ apply(*options) }

type options struct {
	logger          *slog.Logger
	backoff         func(attempt int) time.Duration
	resourceTimeout time.Duration
	cachePath       string
	meterProvider   metric.MeterProvider
}

type optionFunc func(*options)

func (f optionFunc) apply(o *options) { f(o) }

// WithLogger sets the logger; the default discards logs.
func WithLogger(l *slog.Logger) Option {
	return optionFunc(func(o *options) {
		if l != nil {
			o.logger = l
		}
	})
}

// WithBackoff sets the delay before reconnect attempt number attempt
// (0-based; it restarts at 0 after a stream that received a response).
// The default is gRPC's: 1s growing 1.6x per attempt up to 120s, ±20% jitter.
func WithBackoff(backoff func(attempt int) time.Duration) Option {
	return optionFunc(func(o *options) {
		if backoff != nil {
			o.backoff = backoff
		}
	})
}

// WithResourceTimeout sets how long after requesting a resource the client
// waits before reporting it NotFound (gRFC A27's does-not-exist timer).
// The default is 15s; zero or negative disables the timer.
func WithResourceTimeout(d time.Duration) Option {
	return optionFunc(func(o *options) { o.resourceTimeout = d })
}

// WithCache keeps the last good resources in the file at path: after
// each response the client writes every accepted resource (serialized,
// with its version, type and name) atomically, with a SHA-256 checksum
// and mode 0600. When the client starts, it loads the file and serves
// watches from it until the control plane answers, so a restart while
// the control plane is down still finds its configuration. A corrupt
// file, or one written for another node, is logged and ignored.
func WithCache(path string) Option {
	return optionFunc(func(o *options) { o.cachePath = path })
}

// WithMeterProvider sets where the client's metrics go (the
// mesh.xds.client.* instruments); the default is otel.GetMeterProvider().
func WithMeterProvider(mp metric.MeterProvider) Option {
	return optionFunc(func(o *options) {
		if mp != nil {
			o.meterProvider = mp
		}
	})
}

func defaultOptions() options {
	return options{
		meterProvider:   otel.GetMeterProvider(),
		logger:          discardLogger(),
		backoff:         defaultBackoff,
		resourceTimeout: 15 * time.Second,
	}
}

// defaultBackoff is gRPC's connection backoff: 1s base, multiplier 1.6,
// capped at 120s, with ±20% jitter.
func defaultBackoff(attempt int) time.Duration {
	const (
		base       = float64(time.Second)
		multiplier = 1.6
		maxDelay   = float64(120 * time.Second)
		jitter     = 0.2
	)
	d := base * math.Pow(multiplier, float64(max(attempt, 0)))
	d = min(d, maxDelay)
	d *= 1 + jitter*(rand.Float64()*2-1)
	return time.Duration(d)
}
