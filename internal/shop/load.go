package shop

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// Load makes calls from several goroutines until stopped, and counts
// calls and failures: the traffic a test keeps running while it changes
// config, so that a change that fails a call is caught.
type Load struct {
	calls, failed atomic.Int64
	firstErr      atomic.Value // string
	stop          chan struct{}
	stopOnce      sync.Once
	wg            sync.WaitGroup
}

// StartLoad starts workers goroutines that call call in a loop until
// Check (or the end of the test) stops them.
func StartLoad(ctx context.Context, tb testing.TB, workers int, call func(context.Context) error) *Load {
	tb.Helper()
	l := &Load{stop: make(chan struct{})}
	for range workers {
		l.wg.Go(func() {
			for {
				select {
				case <-l.stop:
					return
				default:
				}
				err := call(ctx)
				l.calls.Add(1)
				if err != nil {
					l.failed.Add(1)
					l.firstErr.CompareAndSwap(nil, err.Error())
				}
			}
		})
	}
	tb.Cleanup(l.finish) // stops the workers if the test fails early
	return l
}

func (l *Load) finish() {
	l.stopOnce.Do(func() { close(l.stop) })
	l.wg.Wait()
}

// WaitCalls waits until n more calls have completed: load observed, not
// time slept.
func (l *Load) WaitCalls(ctx context.Context, tb testing.TB, n int64) {
	tb.Helper()
	target := l.calls.Load() + n
	for l.calls.Load() < target {
		select {
		case <-ctx.Done():
			tb.Fatalf("only %d of %d calls completed: %v", l.calls.Load(), target, ctx.Err())
		case <-time.After(time.Millisecond):
		}
	}
}

// Failures returns how many calls failed so far, and the first failure.
func (l *Load) Failures() (n int64, first any) { return l.failed.Load(), l.firstErr.Load() }

// Check stops the load and fails the test if any call failed, or if
// fewer than minCalls ran (the load did not run).
func (l *Load) Check(tb testing.TB, what string, minCalls int64) {
	tb.Helper()
	l.finish()
	tb.Logf("%s: %d calls, %d failed", what, l.calls.Load(), l.failed.Load())
	if l.failed.Load() != 0 {
		tb.Fatalf("%s: %d of %d calls failed; first: %v", what, l.failed.Load(), l.calls.Load(), l.firstErr.Load())
	}
	if l.calls.Load() < minCalls {
		tb.Fatalf("%s: only %d calls ran; the load did not run", what, l.calls.Load())
	}
}
