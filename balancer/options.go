package balancer

import (
	"log/slog"
	"time"
)

// How long a new table waits for its new clusters, and how long unused
// connections drain, unless a test says otherwise (export_test.go).
const (
	defaultPublishTimeout = 10 * time.Second
	defaultDrainGrace     = 5 * time.Second
)

// Defaults for the options below.
const (
	// DefaultRetryBudgetPercent and DefaultMinRetryConcurrency are the retry
	// budget's defaults, as in Envoy.
	DefaultRetryBudgetPercent  = 20
	DefaultMinRetryConcurrency = 3
)

// Option configures both NewResolverBuilder and NewRoundTripper.
type Option interface {
	RoundTripperOption
	apply(*config)
}

// RoundTripperOption configures NewRoundTripper: every Option, and the
// options of HTTP connections (WithPlaintextHTTP2, WithIdleConnTimeout).
type RoundTripperOption interface{ applyRoundTripper(*config) }

type config struct {
	logger           *slog.Logger
	listenerTemplate string
	listenerNamer    func(target string) string
	publishTimeout   time.Duration
	drainGrace       time.Duration
	retryBudget      retryBudget
	plaintextHTTP2   bool
	idleConnTimeout  time.Duration
	clock            timeSource
}

func newConfig[O RoundTripperOption](opts []O) *config {
	c := &config{
		logger:          slog.New(slog.DiscardHandler),
		publishTimeout:  defaultPublishTimeout,
		drainGrace:      defaultDrainGrace,
		retryBudget:     retryBudget{percent: DefaultRetryBudgetPercent, min: DefaultMinRetryConcurrency},
		idleConnTimeout: DefaultIdleConnTimeout,
		clock:           systemClock{},
	}
	for _, o := range opts {
		if any(o) != nil {
			o.applyRoundTripper(c)
		}
	}
	return c
}

type optionFunc func(*config)

func (f optionFunc) apply(c *config)             { f(c) }
func (f optionFunc) applyRoundTripper(c *config) { f(c) }

type roundTripperOptionFunc func(*config)

func (f roundTripperOptionFunc) applyRoundTripper(c *config) { f(c) }

// WithLogger sets the logger of the resolver and of the LB policy of every
// channel it serves. The default discards logs.
func WithLogger(l *slog.Logger) Option {
	return optionFunc(func(c *config) {
		if l != nil {
			c.logger = l
		}
	})
}

// WithListenerName turns a target ("host:port", or an xdstp:// name) into
// the name of the listener to watch; it takes precedence over
// WithListenerNameTemplate. The mesh passes its bootstrap's
// ClientListenerName, which knows the authorities' templates (gRFC A47).
func WithListenerName(name func(target string) string) Option {
	return optionFunc(func(c *config) { c.listenerNamer = name })
}

// WithListenerNameTemplate turns a target "host:port" into the listener
// name to watch by replacing "%s" in template (the bootstrap's
// client_default_listener_resource_name_template). Without it, the listener
// name is "host:port", as istiod names client listeners.
func WithListenerNameTemplate(template string) Option {
	return optionFunc(func(c *config) { c.listenerTemplate = template })
}

// DefaultIdleConnTimeout is how long the RoundTripper keeps an idle
// connection to an endpoint.
const DefaultIdleConnTimeout = 90 * time.Second

// WithRetryBudget limits concurrent retries per cluster to percent of the
// requests in flight to it, but always allows minConcurrent (Envoy's
// retry_budget). Default DefaultRetryBudgetPercent and
// DefaultMinRetryConcurrency.
func WithRetryBudget(percent, minConcurrent uint32) Option {
	return optionFunc(func(c *config) { c.retryBudget = retryBudget{percent: percent, min: minConcurrent} })
}

// WithPlaintextHTTP2 makes the RoundTripper speak HTTP/2 without TLS (h2c,
// prior knowledge) to clusters without TLS; by default it speaks HTTP/1.1
// to them. Over TLS the protocol is what ALPN negotiates.
func WithPlaintextHTTP2() RoundTripperOption {
	return roundTripperOptionFunc(func(c *config) { c.plaintextHTTP2 = true })
}

// WithIdleConnTimeout sets how long the RoundTripper keeps idle connections
// to endpoints. Default DefaultIdleConnTimeout.
func WithIdleConnTimeout(d time.Duration) RoundTripperOption {
	return roundTripperOptionFunc(func(c *config) {
		if d > 0 {
			c.idleConnTimeout = d
		}
	})
}
