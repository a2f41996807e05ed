// Package serializer runs callbacks one at a time, in order: the xDS client
// delivers watch events through one, and each balancer aggregator turns
// them into snapshots through another. Its queue is unbounded, so that
// scheduling never blocks, even from inside a callback or under a lock.
//
// The goroutine that runs the callbacks is started when one is queued and
// exits when the queue is empty: watch events come in bursts, and an idle
// client holds no goroutine for them.
package serializer

import "sync"

// Serializer runs scheduled callbacks one at a time; see the package doc.
// Close stops it.
type Serializer struct {
	afterBatch func()

	mu      sync.Mutex
	queue   []func()
	running bool // a goroutine is draining the queue
	stopped bool
	stop    chan struct{}
	wg      sync.WaitGroup
}

// New returns a Serializer. afterBatch, if not nil, runs after each batch
// of callbacks that were queued together, in the same order as they, so
// that work they make necessary is done once per batch.
func New(afterBatch func()) *Serializer {
	return &Serializer{afterBatch: afterBatch, stop: make(chan struct{})}
}

// Schedule queues f; it is dropped if the serializer is closed.
func (s *Serializer) Schedule(f func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return
	}
	s.queue = append(s.queue, f)
	if !s.running {
		s.running = true
		s.wg.Add(1)
		go s.run()
	}
}

func (s *Serializer) run() {
	defer s.wg.Done()
	for {
		s.mu.Lock()
		batch := s.queue
		s.queue = nil
		if len(batch) == 0 || s.stopped {
			s.running = false
			s.mu.Unlock()
			return
		}
		s.mu.Unlock()
		for _, f := range batch {
			if s.stopping() {
				return
			}
			f()
		}
		if s.afterBatch != nil {
			if s.stopping() {
				return
			}
			s.afterBatch()
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

// Close drops pending callbacks, waits for a running one to return and for
// the goroutine to exit. It must not be called from a callback.
func (s *Serializer) Close() {
	s.mu.Lock()
	first := !s.stopped
	s.stopped = true
	s.queue = nil
	s.mu.Unlock()
	if first {
		close(s.stop)
	}
	s.wg.Wait()
}
