package source

import "sync"

// Notifier hands out a channel that is closed, and replaced, on every
// update: any number of waiters wake at once, and none can miss an update
// that happens after it took the channel.
type Notifier struct {
	mu     sync.Mutex
	ch     chan struct{}
	closed bool
}

// NewNotifier returns a notifier with a fresh channel.
func NewNotifier() *Notifier { return &Notifier{ch: make(chan struct{})} }

// Updated returns the channel the next Notify (or Close) closes.
func (n *Notifier) Updated() <-chan struct{} {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.ch
}

// Notify wakes every waiter on the current channel.
func (n *Notifier) Notify() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return
	}
	close(n.ch)
	n.ch = make(chan struct{})
}

// Close wakes the current waiters one last time; later calls to Updated get
// a channel that is already closed, so nobody waits on a dead source.
func (n *Notifier) Close() {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		return
	}
	n.closed = true
	close(n.ch)
}
