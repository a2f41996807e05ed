package source

import "time"

// Clock is time as the network sources see it. Tests substitute one they
// advance by hand, so rotation and retry schedules are checked without
// waiting on the wall clock.
type Clock interface {
	Now() time.Time
	NewTimer(d time.Duration) Timer
}

// Timer is the part of *time.Timer the sources use.
type Timer interface {
	C() <-chan time.Time
	Stop() bool
}

// RealClock is the wall clock.
type RealClock struct{}

func (RealClock) Now() time.Time { return time.Now() }

func (RealClock) NewTimer(d time.Duration) Timer { return realTimer{time.NewTimer(d)} }

type realTimer struct{ t *time.Timer }

func (r realTimer) C() <-chan time.Time { return r.t.C }
func (r realTimer) Stop() bool          { return r.t.Stop() }

// Backoff doubles a retry delay from min up to max.
type Backoff struct {
	min, max, next time.Duration
}

// NewBackoff starts at minDelay.
func NewBackoff(minDelay, maxDelay time.Duration) *Backoff {
	return &Backoff{min: minDelay, max: maxDelay, next: minDelay}
}

// Delay returns the delay before the next attempt and doubles the one after.
func (b *Backoff) Delay() time.Duration {
	d := b.next
	b.next = min(2*b.next, b.max)
	return d
}

// Reset starts over from the minimum.
func (b *Backoff) Reset() { b.next = b.min }
