package balancer

import (
	"log/slog"
	"time"
)

// Defaults for the options below.
const (
	DefaultPublishTimeout = 10 * time.Second
	DefaultDrainGrace     = 5 * time.Second
	// DefaultRetryBudgetPercent and DefaultMinRetryConcurrency are the retry
	// budget's defaults, as in Envoy.
	DefaultRetryBudgetPercent  = 20
	DefaultMinRetryConcurrency = 3
)

// Option configures NewResolverBuilder and NewRoundTripper.
type Option interface{ apply(*config) }

type config struct {
	logger           *slog.Logger
	listenerTemplate string
	listenerNamer    func(target string) string
	publishTimeout   time.Duration
	drainGrace       time.Duration
	retryBudget      retryBudget
	plaintextHTTP2   bool
	idleConnTimeout  time.Duration
	clock            Clock
}

func newConfig(opts []Option) *config {
	c := &config{
		logger:          slog.New(slog.DiscardHandler),
		publishTimeout:  DefaultPublishTimeout,
		drainGrace:      DefaultDrainGrace,
		retryBudget:     retryBudget{percent: DefaultRetryBudgetPercent, min: DefaultMinRetryConcurrency},
		idleConnTimeout: DefaultIdleConnTimeout,
		clock:           systemClock{},
	}
	for _, o := range opts {
		if o != nil {
			o.apply(c)
		}
	}
	return c
}

type optionFunc func(*config)

func (f optionFunc) apply(c *config) { f(c) }

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

// WithPublishTimeout bounds how long a new routing table waits for the
// clusters it newly sends traffic to to get a ready connection before it is
// published anyway. Default DefaultPublishTimeout.
func WithPublishTimeout(d time.Duration) Option {
	return optionFunc(func(c *config) {
		if d > 0 {
			c.publishTimeout = d
		}
	})
}

// WithDrainGrace sets how long connections to clusters or endpoints that a
// published table no longer uses stay open before they are shut down; gRPC
// lets RPCs already on them finish either way. Default DefaultDrainGrace.
func WithDrainGrace(d time.Duration) Option {
	return optionFunc(func(c *config) {
		if d >= 0 {
			c.drainGrace = d
		}
	})
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
func WithPlaintextHTTP2() Option {
	return optionFunc(func(c *config) { c.plaintextHTTP2 = true })
}

// WithIdleConnTimeout sets how long the RoundTripper keeps idle connections
// to endpoints. Default DefaultIdleConnTimeout.
func WithIdleConnTimeout(d time.Duration) Option {
	return optionFunc(func(c *config) {
		if d > 0 {
			c.idleConnTimeout = d
		}
	})
}
