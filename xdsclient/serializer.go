package xdsclient

import "sync"

// serializer runs callbacks one at a time, in the order they were
// scheduled. Its queue is unbounded so that scheduling never blocks, even
// from inside a callback or under a lock. The goroutine that runs them is
// started when a callback is queued and exits when the queue is empty:
// watch events come in bursts, and an idle client holds no goroutine for
// them.
type serializer struct {
	mu      sync.Mutex
	queue   []func()
	running bool // a goroutine is draining the queue
	stopped bool
	stop    chan struct{}
	wg      sync.WaitGroup
}

func newSerializer() *serializer {
	return &serializer{stop: make(chan struct{})}
}

// schedule queues f; it is dropped if the serializer is closed.
func (s *serializer) schedule(f func()) {
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

func (s *serializer) run() {
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
			select {
			case <-s.stop:
				return
			default:
			}
			f()
		}
	}
}

// close drops pending callbacks, waits for a running one to return and
// for the goroutine to exit. It must not be called from a callback.
func (s *serializer) close() {
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
