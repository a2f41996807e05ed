package transport

import (
	"context"
	"errors"
	"log/slog"
	"sync"
)

// maxLoggedFailures bounds the (cluster, cause) pairs remembered; past it
// the memory starts over, so a long-lived caller still logs new causes.
const maxLoggedFailures = 1024

// failureLog warns about a failed client handshake once per cluster and
// cause: a caller whose calls fail says why (an unknown CA after a control
// plane restart, a server identity not allowed) without a line per retry.
type failureLog struct {
	logger *slog.Logger
	mu     sync.Mutex
	seen   map[[2]string]bool
}

func newFailureLog(logger *slog.Logger) *failureLog {
	return &failureLog{logger: logger, seen: map[[2]string]bool{}}
}

// handshakeFailed logs err, the cause without the address, for cluster and
// peer, unless it was logged for cluster before. A handshake cut short by
// its context says nothing of the peer and is not logged.
func (f *failureLog) handshakeFailed(ctx context.Context, cluster, peer string, cause error) {
	if ctx.Err() != nil || errors.Is(cause, context.Canceled) || errors.Is(cause, context.DeadlineExceeded) {
		return
	}
	key := [2]string{cluster, cause.Error()}
	f.mu.Lock()
	if f.seen[key] {
		f.mu.Unlock()
		return
	}
	if len(f.seen) >= maxLoggedFailures {
		clear(f.seen)
	}
	f.seen[key] = true
	f.mu.Unlock()
	f.logger.Warn("transport: TLS handshake to an upstream failed; calls to this cluster fail until it succeeds (logged once per cluster and cause)",
		"cluster", cluster, "peer", peer, "error", cause)
}
