package balancer

import (
	"context"
	"time"
)

// timeSource is the time the balancer's timers run on: fault injection delays
// and outlier detection intervals. Tests inject one (export_test.go) to step
// time instead of waiting for it.
type timeSource interface {
	Now() time.Time
	// AfterFunc calls f on its own goroutine once d has passed, unless the
	// returned timeSourceTimer was stopped first.
	AfterFunc(d time.Duration, f func()) timeSourceTimer
}

// timeSourceTimer is a timeSource's pending call.
type timeSourceTimer interface {
	// Stop cancels the call and reports whether it did (false when the call
	// already started or was stopped).
	Stop() bool
}

type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

func (systemClock) AfterFunc(d time.Duration, f func()) timeSourceTimer { return time.AfterFunc(d, f) }

// sleepClock waits d on clock, or until ctx ends.
func sleepClock(ctx context.Context, clock timeSource, d time.Duration) error {
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
