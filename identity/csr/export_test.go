package csr

import "mesh/identity/internal/source"

// Done exposes the channel closed when a Source's renewal goroutine exits.
func Done(s *Source) <-chan struct{} { return s.done }

// WithClock makes a Source use c instead of the real clock.
func WithClock(c *source.FakeClock) Option { return optionFunc(func(o *options) { o.Clock = c }) }
