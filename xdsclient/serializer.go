package xdsclient

import "sync"

// serializer runs callbacks one at a time, in the order they were
// scheduled, on a goroutine it owns. Its queue is unbounded so that
// scheduling never blocks, even from inside a callback or under a lock.
type serializer struct {
	mu      sync.Mutex
	queue   []func()
	stopped bool
	wake    chan struct{}
	stop    chan struct{}
	done    chan struct{}
}

func newSerializer() *serializer {
	s := &serializer{wake: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
	go s.run()
	return s
}

// schedule queues f; it is dropped if the serializer is closed.
func (s *serializer) schedule(f func()) {
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

func (s *serializer) run() {
	defer close(s.done)
	for {
		s.mu.Lock()
		batch := s.queue
		s.queue = nil
		s.mu.Unlock()
		for _, f := range batch {
			select {
			case <-s.stop:
				return
			default:
			}
			f()
		}
		select {
		case <-s.wake:
		case <-s.stop:
			return
		}
	}
}

// close drops pending callbacks, waits for a running one to return and
// stops the goroutine. It must not be called from a callback.
func (s *serializer) close() {
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
