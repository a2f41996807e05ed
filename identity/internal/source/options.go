package source

import (
	"log/slog"
	"time"
)

// Default bounds of the delay between attempts to reach a Workload API or
// a CA that failed; the delay doubles from min to max.
const (
	DefaultRetryMin = 200 * time.Millisecond
	DefaultRetryMax = 30 * time.Second
)

// Options are the settings every source takes; each package's options
// embed them.
type Options struct {
	Logger *slog.Logger
	// Clock drives rotation and retries; tests replace it.
	Clock Clock
	// RetryMin and RetryMax bound the delay between attempts to reach a
	// Workload API or a CA that failed.
	RetryMin, RetryMax time.Duration
}

// DefaultOptions are the settings before any option is applied.
func DefaultOptions() Options {
	return Options{Logger: slog.Default(), Clock: RealClock{}, RetryMin: DefaultRetryMin, RetryMax: DefaultRetryMax}
}

// SetLogger sets the logger unless l is nil.
func (o *Options) SetLogger(l *slog.Logger) {
	if l != nil {
		o.Logger = l
	}
}

// SetRetry sets the retry bounds; non-positive values keep the default.
func (o *Options) SetRetry(minDelay, maxDelay time.Duration) {
	if minDelay > 0 {
		o.RetryMin = minDelay
	}
	if maxDelay > 0 {
		o.RetryMax = maxDelay
	}
	o.RetryMax = max(o.RetryMax, o.RetryMin)
}
