package balancer

import (
	"context"
	"errors"
	"math"
	"net/http"
	"regexp"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"

	"mesh/internal/testutil"
	"mesh/xdsclient"
)

// TestGRPCPerTryTimeout: an attempt that outlives per_try_timeout is cut
// and retried; the first attempt here would otherwise wait until the
// test's hang guard.
func TestGRPCPerTryTimeout(t *testing.T) {
	ctx := testutil.Context(t)
	e := newTestEnv(t)
	var calls atomic.Int64
	var armed atomic.Bool
	b, _ := startScriptedBackend(t, func(ctx context.Context, _ int64) error {
		if calls.Add(1) == 1 && armed.Load() {
			<-ctx.Done() // only a per-try timeout ends this attempt
			return ctx.Err()
		}
		return nil
	})
	e.serve("c", b)
	policy := grpcRetryPolicy(2, codes.DeadlineExceeded)
	policy.PerTryTimeout = 50 * time.Millisecond
	e.routeAction(xdsclient.RouteAction{Cluster: "c", RetryPolicy: policy})
	e.waitRouted(ctx, t)
	calls.Store(0)
	armed.Store(true)
	if _, err := e.client.EmptyCall(ctx, &testpb.Empty{}); err != nil {
		t.Fatalf("RPC whose first attempt hangs: %v, want the per-try timeout to retry it", err)
	}
	if n := calls.Load(); n != 2 {
		t.Errorf("backend saw %d attempts, want 2", n)
	}
}

// TestHTTPPerTryTimeout is TestGRPCPerTryTimeout for the RoundTripper.
func TestHTTPPerTryTimeout(t *testing.T) {
	ctx := testutil.Context(t)
	e := newHTTPEnv(t)
	var calls atomic.Int64
	var armed atomic.Bool
	a := startHTTPBackend(t, "a", http1Plain, func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) == 1 && armed.Load() {
			<-r.Context().Done()
		}
	})
	e.serve("c", nil, a)
	policy := httpRetryPolicy(2)
	policy.HTTP5xx, policy.PerTryTimeout = true, 50*time.Millisecond
	e.route(&xdsclient.RouteConfig{Name: "rc", VirtualHosts: []xdsclient.VirtualHost{{
		Name: "vh", Domains: []string{"*"},
		Routes: []xdsclient.Route{{Match: xdsclient.RouteMatch{Prefix: "/"}, Action: xdsclient.RouteAction{Cluster: "c", RetryPolicy: policy}}},
	}}})
	testutil.WaitFor(ctx, t, "the route", func() bool {
		_, resp, err := e.get(ctx, "/warm")
		return err == nil && resp.StatusCode == http.StatusOK
	})
	calls.Store(0)
	armed.Store(true)
	if _, resp, err := e.get(ctx, "/x"); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("request whose first attempt hangs: %v %v, want the per-try timeout to retry it", resp, err)
	}
	if n := calls.Load(); n != 2 {
		t.Errorf("backend saw %d attempts, want 2", n)
	}
}

// TestRefusedStreamIsRetriable: refused-stream retries what the server
// refused before processing it, as grpc-go and net/http report it, and
// nothing else.
func TestRefusedStreamIsRetriable(t *testing.T) {
	p := &xdsclient.RetryPolicy{RefusedStream: true, NumRetries: 1}
	grpcRefused := status.Error(codes.Unavailable, "stream terminated by RST_STREAM with error code: REFUSED_STREAM")
	httpRefused := errors.New("stream error: stream ID 3; REFUSED_STREAM")
	r := &grpcRetrier{policy: p}
	if !r.retriable(grpcRefused) || r.retriable(status.Error(codes.Unavailable, "connection reset")) {
		t.Error("gRPC: refused-stream must retry REFUSED_STREAM and only it")
	}
	if !retriableHTTP(p, nil, httpRefused, false) || retriableHTTP(p, nil, errors.New("connection reset by peer"), false) {
		t.Error("HTTP: refused-stream must retry REFUSED_STREAM and only it")
	}
	if retriableHTTP(&xdsclient.RetryPolicy{NumRetries: 1}, nil, httpRefused, false) {
		t.Error("HTTP: REFUSED_STREAM retried without refused-stream, 5xx or reset")
	}
}

// TestRingSizesBoundTheRing: minimum_ring_size and maximum_ring_size
// (gRFC A42) bound the ring as a whole.
func TestRingSizesBoundTheRing(t *testing.T) {
	addrs := []string{"10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80", "10.0.0.4:80"}
	for _, tc := range []struct {
		min, max uint64
		n, want  int
	}{
		{xdsclient.DefaultMinRingSize, xdsclient.DefaultMaxRingSize, 2, 1024},
		{xdsclient.DefaultMinRingSize, xdsclient.DefaultMaxRingSize, 3, 3 * 342},
		{1, 64, 4, 64},
		{1, 2, 4, 4}, // at least one entry each
		{1, xdsclient.DefaultMaxRingSize, 4, 4 * ringEntriesPerEndpoint},
	} {
		c := newChooser(lbConfig{policy: xdsclient.LBRingHash, minRing: tc.min, maxRing: tc.max}, addrs[:tc.n], counters(tc.n))
		if len(c.ring) != tc.want {
			t.Errorf("ring of %d endpoints with sizes [%d, %d] has %d entries, want %d", tc.n, tc.min, tc.max, len(c.ring), tc.want)
		}
	}
}

// TestChoiceCountSamplesMore: least_request with choice_count 10 picks
// the busy one of two endpoints only when all 10 samples land on it.
func TestChoiceCountSamplesMore(t *testing.T) {
	active := counters(2)
	active[0].Store(100)
	c := newChooser(lbConfig{policy: xdsclient.LBLeastRequest, choices: 10}, []string{"a:1", "b:1"}, active)
	var next atomic.Uint32
	const n = 20000
	busy := 0
	for range n {
		if c.choose(2, &next, 0, false) == 0 {
			busy++
		}
	}
	p := math.Pow(0.5, 10)
	if sigma := math.Sqrt(n * p * (1 - p)); math.Abs(float64(busy)-n*p) > 5*sigma+1 {
		t.Errorf("busy endpoint chosen %d of %d times, want %.1f ± %.1f", busy, n, n*p, 5*sigma)
	}
}

// TestRegexRewriteHashesTheRewrittenValue: a header hash policy with
// regex_rewrite (gRFC A42) hashes the value as rewritten.
func TestRegexRewriteHashesTheRewrittenValue(t *testing.T) {
	rewrite := xdsclient.HashPolicy{Kind: xdsclient.HashHeader, Name: "x-user", Rewrite: regexp.MustCompile(`-[0-9]+`), Substitution: ""}
	plain := xdsclient.HashPolicy{Kind: xdsclient.HashHeader, Name: "x-user"}
	h1, ok1 := requestHash([]xdsclient.HashPolicy{rewrite}, HTTPHeaders(http.Header{"X-User": {"alice-123"}}), nil, 1)
	h2, ok2 := requestHash([]xdsclient.HashPolicy{rewrite}, HTTPHeaders(http.Header{"X-User": {"alice-456"}}), nil, 1)
	h3, ok3 := requestHash([]xdsclient.HashPolicy{plain}, HTTPHeaders(http.Header{"X-User": {"alice"}}), nil, 1)
	h4, _ := requestHash([]xdsclient.HashPolicy{plain}, HTTPHeaders(http.Header{"X-User": {"alice-123"}}), nil, 1)
	if !ok1 || !ok2 || !ok3 || h1 != h2 || h1 != h3 || h1 == h4 {
		t.Errorf("hashes %x %x %x %x: the rewritten values must hash as \"alice\"", h1, h2, h3, h4)
	}
}
