package balancer

import (
	"context"
	"math/rand/v2"
	"time"

	"mesh/xdsclient"
)

// maxGRPCAttempts caps attempts per RPC, as gRPC does (gRFC A44).
const maxGRPCAttempts = 5

// retryBackoff returns how long to wait before retry number n (1-based):
// a random duration up to base*2^(n-1), capped at the policy's maximum
// (exponential backoff with full jitter, gRFC A44).
func retryBackoff(p *xdsclient.RetryPolicy, n int) time.Duration {
	ceiling := p.BackoffBase
	for i := 1; i < n && ceiling < p.BackoffMax; i++ {
		ceiling *= 2
	}
	ceiling = min(ceiling, p.BackoffMax)
	if ceiling <= 0 {
		return 0
	}
	return time.Duration(rand.Int64N(int64(ceiling) + 1))
}

// sleepContext waits for d or until ctx is done, whichever comes first.
func sleepContext(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
