package balancer

import "time"

// Test-only knobs, for this package's tests and its examples.

// Clock is the time the balancer's timers run on; see timeSource.
type Clock = timeSource

// Timer is a Clock's pending call.
type Timer = timeSourceTimer

// WithClock sets the clock of fault delays and outlier detection. The
// default is the system clock.
func WithClock(c Clock) Option {
	return optionFunc(func(cfg *config) {
		if c != nil {
			cfg.clock = c
		}
	})
}

// WithPublishTimeout bounds how long a new routing table waits for the
// clusters it newly sends traffic to to get a ready connection before it is
// published anyway. Default 10 s.
func WithPublishTimeout(d time.Duration) Option {
	return optionFunc(func(c *config) {
		if d > 0 {
			c.publishTimeout = d
		}
	})
}

// WithDrainGrace sets how long connections to clusters or endpoints that a
// published table no longer uses stay open before they are shut down.
// Default 5 s.
func WithDrainGrace(d time.Duration) Option {
	return optionFunc(func(c *config) {
		if d >= 0 {
			c.drainGrace = d
		}
	})
}
