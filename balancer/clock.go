package balancer

import (
	"context"
	"time"
)

// Clock is the time the balancer's timers run on: fault injection delays
// and outlier detection intervals. Tests inject one to step time instead of
// waiting for it.
//
// # Experimental
type Clock interface {
	Now() time.Time
	// AfterFunc calls f on its own goroutine once d has passed, unless the
	// returned Timer was stopped first.
	AfterFunc(d time.Duration, f func()) Timer
}

// Timer is a Clock's pending call.
type Timer interface {
	// Stop cancels the call and reports whether it did (false when the call
	// already started or was stopped).
	Stop() bool
}

// WithClock sets the clock of fault delays and outlier detection. The
// default is the system clock.
//
// # Experimental
func WithClock(c Clock) Option {
	return optionFunc(func(cfg *config) {
		if c != nil {
			cfg.clock = c
		}
	})
}

type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

func (systemClock) AfterFunc(d time.Duration, f func()) Timer { return time.AfterFunc(d, f) }

// sleepClock waits d on clock, or until ctx ends.
func sleepClock(ctx context.Context, clock Clock, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	fired := make(chan struct{})
	t := clock.AfterFunc(d, func() { close(fired) })
	select {
	case <-fired:
		return nil
	case <-ctx.Done():
		t.Stop()
		return ctx.Err()
	}
}
