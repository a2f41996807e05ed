package identity

// PollerDone exposes the channel closed when a FileSource's poller exits,
// so tests can check that Close waited for it.
func PollerDone(s *FileSource) <-chan struct{} { return s.done }
