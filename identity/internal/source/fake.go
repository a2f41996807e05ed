package source

import (
	"sync"
	"time"
)

// FakeClock is a clock tests move by hand: Now is fixed until Set, and every
// timer a source starts is handed to the test through Timers, to be
// inspected and fired.
type FakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers chan *FakeTimer
}

// NewFakeClock returns a clock standing at now.
func NewFakeClock(now time.Time) *FakeClock {
	return &FakeClock{now: now, timers: make(chan *FakeTimer, 64)}
}

// Now is where the clock stands.
func (c *FakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

// Set moves the clock to now.
func (c *FakeClock) Set(now time.Time) {
	c.mu.Lock()
	c.now = now
	c.mu.Unlock()
}

// Timers delivers each timer a source starts, in order.
func (c *FakeClock) Timers() <-chan *FakeTimer { return c.timers }

// NewTimer starts a timer that fires only when the test says so.
func (c *FakeClock) NewTimer(d time.Duration) Timer {
	t := &FakeTimer{D: d, c: make(chan time.Time, 1), clock: c}
	c.timers <- t
	return t
}

// FakeTimer is one timer started on a FakeClock.
type FakeTimer struct {
	D     time.Duration // the duration the source asked for
	c     chan time.Time
	clock *FakeClock

	mu      sync.Mutex
	stopped bool
}

// Fire delivers the timer's tick as if D had passed.
func (t *FakeTimer) Fire() {
	select {
	case t.c <- t.clock.Now():
	default:
	}
}

// Stopped reports whether the source stopped the timer.
func (t *FakeTimer) Stopped() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.stopped
}

// C delivers the tick.
func (t *FakeTimer) C() <-chan time.Time { return t.c }

// Stop stops the timer.
func (t *FakeTimer) Stop() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	was := !t.stopped
	t.stopped = true
	return was
}
