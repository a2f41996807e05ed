package xdsclient

import (
	"log/slog"
	"math"
	"math/rand/v2"
	"time"
)

// Option configures a Client.
type Option interface{ apply(*options) }

type options struct {
	logger          *slog.Logger
	backoff         func(attempt int) time.Duration
	resourceTimeout time.Duration
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

func defaultOptions() options {
	return options{
		logger:          discardLogger(),
		backoff:         DefaultBackoff,
		resourceTimeout: 15 * time.Second,
	}
}

// DefaultBackoff is gRPC's connection backoff: 1s base, multiplier 1.6,
// capped at 120s, with ±20% jitter.
func DefaultBackoff(attempt int) time.Duration {
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
