package balancer

import (
	"context"
	"sync"
	"testing"
	"time"

	"mesh/internal/testutil"
)

// fakeClock is a Clock that moves only when Advance is called. Due timers
// run on the goroutine calling Advance, in deadline order.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	timers []*fakeTimer
}

type fakeTimer struct {
	clock *fakeClock
	at    time.Time
	f     func()
}

func newFakeClock() *fakeClock { return &fakeClock{now: time.Unix(1_700_000_000, 0)} }

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) AfterFunc(d time.Duration, f func()) Timer {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := &fakeTimer{clock: c, at: c.now.Add(d), f: f}
	c.timers = append(c.timers, t)
	return t
}

func (t *fakeTimer) Stop() bool {
	c := t.clock
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, o := range c.timers {
		if o == t {
			c.timers = append(c.timers[:i], c.timers[i+1:]...)
			return true
		}
	}
	return false
}

// pending returns how many timers wait.
func (c *fakeClock) pending() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.timers)
}

// Advance moves time forward by d and runs the timers that became due,
// including those they set that are due too.
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
	for {
		c.mu.Lock()
		var due *fakeTimer
		idx := -1
		for i, t := range c.timers {
			if !t.at.After(c.now) && (due == nil || t.at.Before(due.at)) {
				due, idx = t, i
			}
		}
		if due != nil {
			c.timers = append(c.timers[:idx], c.timers[idx+1:]...)
		}
		c.mu.Unlock()
		if due == nil {
			return
		}
		due.f()
	}
}

// waitTimers waits until at least n timers are pending.
func (c *fakeClock) waitTimers(ctx context.Context, t *testing.T, n int) {
	t.Helper()
	testutil.WaitFor(ctx, t, "pending timers", func() bool { return c.pending() >= n })
}

// syncWaitGroup is a sync.WaitGroup to hand to code under test.
type syncWaitGroup struct{ sync.WaitGroup }
