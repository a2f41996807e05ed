package xdsclient

import callbacks "mesh/internal/serializer"

// serializer runs watch callbacks one at a time, in the order they were
// scheduled (the module's one serializer, in internal/serializer).
type serializer struct{ s *callbacks.Serializer }

func newSerializer() *serializer { return &serializer{s: callbacks.New(nil)} }

// schedule queues f; it is dropped if the serializer is closed.
func (s *serializer) schedule(f func()) { s.s.Schedule(f) }

// close drops pending callbacks, waits for a running one to return and
// stops the goroutine. It must not be called from a callback.
func (s *serializer) close() { s.s.Close() }
