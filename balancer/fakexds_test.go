package balancer

import (
	"sync"

	"mesh/xdsclient"
)

// fakeXDS is a small in-memory XDSClient for this package's unit tests. It
// follows the documented watch semantics of *xdsclient.Client (callbacks
// serialized on a goroutine it owns, cached resources delivered at once,
// idempotent cancel). The end-to-end tests with the real xDS client and the
// embedded control plane are written at the mesh level.
type fakeXDS struct {
	listeners *fakeStore[*xdsclient.Listener]
	routes    *fakeStore[*xdsclient.RouteConfig]
	clusters  *fakeStore[*xdsclient.Cluster]
	endpoints *fakeStore[*xdsclient.Endpoints]

	mu      sync.Mutex
	queue   []func()
	wake    chan struct{}
	done    chan struct{}
	stopped chan struct{}
	once    sync.Once
}

func newFakeXDS() *fakeXDS {
	f := &fakeXDS{wake: make(chan struct{}, 1), done: make(chan struct{}), stopped: make(chan struct{})}
	f.listeners = newFakeStore[*xdsclient.Listener](f)
	f.routes = newFakeStore[*xdsclient.RouteConfig](f)
	f.clusters = newFakeStore[*xdsclient.Cluster](f)
	f.endpoints = newFakeStore[*xdsclient.Endpoints](f)
	go f.run()
	return f
}

func (f *fakeXDS) run() {
	defer close(f.stopped)
	for {
		select {
		case <-f.done:
			return
		case <-f.wake:
		}
		f.mu.Lock()
		batch := f.queue
		f.queue = nil
		f.mu.Unlock()
		for _, deliver := range batch {
			deliver()
		}
	}
}

func (f *fakeXDS) Close() {
	f.once.Do(func() { close(f.done) })
	<-f.stopped
}

func (f *fakeXDS) enqueueLocked(deliver func()) {
	f.queue = append(f.queue, deliver)
	select {
	case f.wake <- struct{}{}:
	default:
	}
}

// activeWatches counts watches not yet cancelled.
func (f *fakeXDS) activeWatches() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.listeners.countLocked() + f.routes.countLocked() + f.clusters.countLocked() + f.endpoints.countLocked()
}

func (f *fakeXDS) WatchListener(name string, fn func(xdsclient.Event[*xdsclient.Listener])) func() {
	return f.listeners.watch(name, fn)
}

func (f *fakeXDS) WatchRouteConfig(name string, fn func(xdsclient.Event[*xdsclient.RouteConfig])) func() {
	return f.routes.watch(name, fn)
}

func (f *fakeXDS) WatchCluster(name string, fn func(xdsclient.Event[*xdsclient.Cluster])) func() {
	return f.clusters.watch(name, fn)
}

func (f *fakeXDS) WatchEndpoints(name string, fn func(xdsclient.Event[*xdsclient.Endpoints])) func() {
	return f.endpoints.watch(name, fn)
}

type fakeWatcher[T any] struct {
	name string
	fn   func(xdsclient.Event[T])
}

type fakeStore[T any] struct {
	f        *fakeXDS
	cache    map[string]xdsclient.Event[T]
	watchers map[*fakeWatcher[T]]bool
}

func newFakeStore[T any](f *fakeXDS) *fakeStore[T] {
	return &fakeStore[T]{f: f, cache: map[string]xdsclient.Event[T]{}, watchers: map[*fakeWatcher[T]]bool{}}
}

func (s *fakeStore[T]) countLocked() int { return len(s.watchers) }

func (s *fakeStore[T]) watch(name string, fn func(xdsclient.Event[T])) func() {
	w := &fakeWatcher[T]{name: name, fn: fn}
	s.f.mu.Lock()
	s.watchers[w] = true
	if ev, ok := s.cache[name]; ok {
		s.deliverLocked(w, ev)
	}
	s.f.mu.Unlock()
	return func() {
		s.f.mu.Lock()
		delete(s.watchers, w)
		s.f.mu.Unlock()
	}
}

func (s *fakeStore[T]) deliverLocked(w *fakeWatcher[T], ev xdsclient.Event[T]) {
	s.f.enqueueLocked(func() {
		s.f.mu.Lock()
		live := s.watchers[w]
		s.f.mu.Unlock()
		if live {
			w.fn(ev)
		}
	})
}

func (s *fakeStore[T]) push(name string, ev xdsclient.Event[T]) {
	s.f.mu.Lock()
	defer s.f.mu.Unlock()
	if ev.Err == nil {
		s.cache[name] = ev
	}
	for w := range s.watchers {
		if w.name == name {
			s.deliverLocked(w, ev)
		}
	}
}

// set publishes a new version of resource name.
func (s *fakeStore[T]) set(name string, res T) { s.push(name, xdsclient.Event[T]{Resource: res}) }

// remove tells watchers that name does not exist.
func (s *fakeStore[T]) remove(name string) { s.push(name, xdsclient.Event[T]{NotFound: true}) }

// fail delivers an error (a NACK); the cached version stays.
func (s *fakeStore[T]) fail(name string, err error) { s.push(name, xdsclient.Event[T]{Err: err}) }

// The real client satisfies the interface the resolver depends on.
var _ XDSClient = (*xdsclient.Client)(nil)
