package identity

import (
	"errors"
	"log/slog"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Source supplies the current X.509 SVID and the trust bundles to verify
// peers with. Implementations are safe for concurrent use.
type Source interface {
	x509svid.Source
	x509bundle.Source
}

// ErrClosed is returned by a source used after Close.
var ErrClosed = errors.New("identity: source closed")

// Option configures a source.
type Option interface {
	apply(*options)
}

type options struct {
	logger *slog.Logger
	// clock drives rotation and retries; tests replace it.
	clock clock
	// retryMin and retryMax bound the delay between attempts to reach a
	// Workload API or a CA that failed.
	retryMin, retryMax time.Duration
	// svidHint picks one SVID among several the Workload API offers.
	svidHint string
	// keyFile, if set, is where a CSRSource writes its private key.
	keyFile string
}

type optionFunc func(*options)

func (f optionFunc) apply(o *options) { f(o) }

// WithLogger sets the logger for reload events and errors; the default is
// slog.Default(), because a failed reload is worth seeing.
func WithLogger(logger *slog.Logger) Option {
	return optionFunc(func(o *options) {
		if logger != nil {
			o.logger = logger
		}
	})
}

// Default bounds of the delay between attempts to reach a Workload API or
// a CA that failed; the delay doubles from min to max.
const (
	defaultRetryMin = 200 * time.Millisecond
	defaultRetryMax = 30 * time.Second
)

// WithRetryBackoff bounds the delay between attempts to reach a Workload
// API or a CA after a failure: it starts at minDelay and doubles up to
// maxDelay (defaults 200ms and 30s). Non-positive values keep the default.
func WithRetryBackoff(minDelay, maxDelay time.Duration) Option {
	return optionFunc(func(o *options) {
		if minDelay > 0 {
			o.retryMin = minDelay
		}
		if maxDelay > 0 {
			o.retryMax = maxDelay
		}
	})
}

func newOptions(opts []Option) options {
	o := options{
		logger:   slog.Default(),
		clock:    realClock{},
		retryMin: defaultRetryMin,
		retryMax: defaultRetryMax,
	}
	for _, opt := range opts {
		if opt != nil {
			opt.apply(&o)
		}
	}
	o.retryMax = max(o.retryMax, o.retryMin)
	return o
}
