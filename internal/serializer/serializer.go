// Package serializer runs callbacks one at a time, in order, on a goroutine
// it owns: the xDS client delivers watch events through one, and each
// balancer aggregator turns them into snapshots through another. Its queue
// is unbounded, so that scheduling never blocks, even from inside a
// callback or under a lock.
package serializer

import "sync"

// Serializer runs scheduled callbacks one at a time; see the package doc.
type Serializer struct {
	afterBatch func()

	mu      sync.Mutex
	queue   []func()
	stopped bool
	wake    chan struct{}
	stop    chan struct{}
	done    chan struct{}
}

// New starts a Serializer. afterBatch, if not nil, runs on its goroutine
// after each batch of callbacks that were queued together, so that work
// they make necessary is done once per batch.
func New(afterBatch func()) *Serializer {
	s := &Serializer{afterBatch: afterBatch, wake: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	go s.run()
	return s
}

// Schedule queues f; it is dropped if the serializer is closed.
func (s *Serializer) Schedule(f func()) {
	s.mu.Lock()
	if s.stopped {
		s.mu.Unlock()
		return
	}
	s.queue = append(s.queue, f)
	s.mu.Unlock()
	select {
	case s.wake <- struct{}{}:
	default:
	}
}

func (s *Serializer) run() {
	defer close(s.done)
	for {
		s.mu.Lock()
		batch := s.queue
		s.queue = nil
		s.mu.Unlock()
		for _, f := range batch {
			if s.stopping() {
				return
			}
			f()
		}
		if len(batch) > 0 && s.afterBatch != nil {
			if s.stopping() {
				return
			}
			s.afterBatch()
		}
		select {
		case <-s.wake:
		case <-s.stop:
			return
		}
	}
}

func (s *Serializer) stopping() bool {
	select {
	case <-s.stop:
		return true
	default:
		return false
	}
}

// Close drops pending callbacks, waits for a running one to return and
// stops the goroutine. It must not be called from a callback.
func (s *Serializer) Close() {
	s.mu.Lock()
	if s.stopped {
		s.mu.Unlock()
		<-s.done
		return
	}
	s.stopped = true
	s.queue = nil
	s.mu.Unlock()
	close(s.stop)
	<-s.done
}
