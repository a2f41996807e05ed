package balancer

import (
	"log/slog"
	"time"
)

// Defaults for the options below.
const (
	DefaultPublishTimeout = 10 * time.Second
	DefaultDrainGrace     = 5 * time.Second
)

// Option configures NewResolverBuilder.
type Option interface{ apply(*config) }

type config struct {
	logger           *slog.Logger
	listenerTemplate string
	publishTimeout   time.Duration
	drainGrace       time.Duration
}

func newConfig(opts []Option) *config {
	c := &config{
		logger:         slog.New(slog.DiscardHandler),
		publishTimeout: DefaultPublishTimeout,
		drainGrace:     DefaultDrainGrace,
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
