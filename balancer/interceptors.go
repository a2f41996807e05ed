package balancer

import (
	"context"
	"errors"
	"io"
	"strconv"
	"strings"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"mesh/xdsclient"
)

// previousAttemptsHeader tells the server how many attempts came before
// this one (gRFC A44).
const previousAttemptsHeader = "grpc-previous-rpc-attempts"

// maxReplayedMessages bounds what a retried stream buffers; a stream that
// sends more is committed to its first attempt.
const maxReplayedMessages = 64

// DialOptions returns what a channel to a "mesh:///host:port" target needs:
// this resolver and the client interceptors that apply the routes' timeouts
// and retries.
func (b *ResolverBuilder) DialOptions() []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithResolvers(b),
		grpc.WithChainUnaryInterceptor(b.UnaryClientInterceptor()),
		grpc.WithChainStreamInterceptor(b.StreamClientInterceptor()),
	}
}

// UnaryClientInterceptor applies, to each RPC on a channel this builder
// resolves, the matching route's timeout (gRFC A31: the deadline becomes the
// earlier of the caller's and the route's) and retry policy (gRFC A44:
// retry on the policy's status codes, at most num_retries times and at
// most 5 attempts, with exponential backoff and jitter, within the
// cluster's retry budget). RPCs on other channels pass through.
func (b *ResolverBuilder) UnaryClientInterceptor() grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		router, route, headers := b.routeFor(ctx, cc, method)
		if route == nil {
			return invoker(ctx, method, req, reply, cc, opts...)
		}
		if t := route.Action.Timeout; t > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, t)
			defer cancel()
		}
		abort, release, err := b.faults.inject(ctx, router, route, headers, true)
		defer release()
		if err != nil {
			return status.FromContextError(err).Err()
		}
		if abort != nil {
			return abort.grpcStatus()
		}
		policy := route.Action.RetryPolicy
		if policy == nil {
			return invoker(ctx, method, req, reply, cc, opts...)
		}
		r := &grpcRetrier{ctx: ctx, policy: policy, call: &callInfo{}}
		attemptCtx := withCallInfo(ctx, r.call)
		for {
			err := r.invoke(attemptCtx, func(ctx context.Context) error {
				return invoker(ctx, method, req, reply, cc, opts...)
			})
			r.releaseSlot()
			if err == nil || !r.retry(err) {
				return err
			}
			attemptCtx = r.nextAttemptContext()
		}
	}
}

// StreamClientInterceptor is UnaryClientInterceptor for streams. A stream
// is retried only before any response message arrived, and only when the
// client had finished sending (CloseSend) at most 64 messages, which are
// replayed: after that the stream is committed to its attempt. The route
// timeout bounds the whole stream.
func (b *ResolverBuilder) StreamClientInterceptor() grpc.StreamClientInterceptor {
	return func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
		router, route, headers := b.routeFor(ctx, cc, method)
		if route == nil {
			return streamer(ctx, desc, cc, method, opts...)
		}
		cancel := context.CancelFunc(func() {})
		if t := route.Action.Timeout; t > 0 {
			ctx, cancel = context.WithTimeout(ctx, t)
		}
		// A stream's fault counts as active until its delay ends.
		abort, release, err := b.faults.inject(ctx, router, route, headers, true)
		release()
		if err != nil {
			cancel()
			return nil, status.FromContextError(err).Err()
		}
		if abort != nil {
			cancel()
			return nil, abort.grpcStatus()
		}
		policy := route.Action.RetryPolicy
		if policy == nil || (len(policy.GRPCCodes) == 0 && !policy.RefusedStream) {
			cs, err := streamer(ctx, desc, cc, method, opts...)
			if err != nil {
				cancel()
				return nil, err
			}
			return &finishingStream{ClientStream: cs, finish: cancel}, nil
		}
		r := &grpcRetrier{ctx: ctx, policy: policy, call: &callInfo{}}
		s := &retryingStream{
			retrier: r, cancel: cancel,
			newStream: func(ctx context.Context) (grpc.ClientStream, error) {
				return streamer(ctx, desc, cc, method, opts...)
			},
		}
		attemptCtx := withCallInfo(ctx, r.call)
		for {
			cs, err := s.newStream(attemptCtx)
			if err == nil {
				s.cur = cs
				return s, nil
			}
			r.releaseSlot()
			if !r.retry(err) {
				cancel()
				return nil, err
			}
			attemptCtx = r.nextAttemptContext()
		}
	}
}

// routeFor returns the route an RPC on cc matches, with its router and
// headers, or a nil route when cc is not a mesh channel or its routes are
// not known yet.
func (b *ResolverBuilder) routeFor(ctx context.Context, cc *grpc.ClientConn, method string) (*Router, *xdsclient.Route, Headers) {
	authority, ok := strings.CutPrefix(cc.Target(), Scheme+":///")
	if !ok {
		return nil, nil, nil
	}
	router := b.routers.lookup(authority)
	if router == nil {
		return nil, nil, nil
	}
	var headers Headers
	if router.needsHeaders || router.faultHeaders {
		md, _ := metadata.FromOutgoingContext(ctx)
		headers = MetadataHeaders(md)
	}
	return router, router.matchOnly(method, headers), headers
}

// grpcRetrier decides, attempt after attempt, whether an RPC is retried. It
// lives for one RPC and is used by one goroutine at a time.
type grpcRetrier struct {
	ctx      context.Context // the RPC's, with the route timeout applied
	policy   *xdsclient.RetryPolicy
	call     *callInfo
	attempts int
	slot     *clusterState // holds a retry budget slot while a retry runs
	// timedOut: the last attempt ran out of its per_try_timeout.
	timedOut bool
}

// invoke runs one unary attempt within the policy's per_try_timeout.
func (r *grpcRetrier) invoke(ctx context.Context, attempt func(context.Context) error) error {
	r.timedOut = false
	if r.policy.PerTryTimeout <= 0 {
		return attempt(ctx)
	}
	actx, cancel := context.WithTimeout(ctx, r.policy.PerTryTimeout)
	defer cancel()
	err := attempt(actx)
	r.timedOut = err != nil && errors.Is(actx.Err(), context.DeadlineExceeded) && ctx.Err() == nil
	return err
}

// retriable reports whether the policy retries an attempt that failed
// with err: its status code; a per-try timeout, which Envoy retries as a
// 504 (gateway-error, 5xx) and mesh also under deadline-exceeded; or a
// stream the server refused before processing it (refused-stream), which
// grpc-go reports as UNAVAILABLE after its own transparent retry.
func (r *grpcRetrier) retriable(err error) bool {
	p := r.policy
	if r.timedOut {
		return p.HTTP5xx || p.HTTPGatewayError || p.RetriesGRPC(codes.DeadlineExceeded)
	}
	if p.RetriesGRPC(status.Code(err)) {
		return true
	}
	return p.RefusedStream && refusedStream(err)
}

// refusedStream reports whether err says the server refused the stream
// (HTTP/2 RST_STREAM or GOAWAY with REFUSED_STREAM), so nothing of the
// request was processed. Neither grpc-go nor net/http exports a type for
// it; both name the code in the message.
func refusedStream(err error) bool {
	if s, ok := status.FromError(err); ok {
		return s.Code() == codes.Unavailable && strings.Contains(s.Message(), "REFUSED_STREAM")
	}
	return strings.Contains(err.Error(), "REFUSED_STREAM")
}

// retry reports whether the RPC that failed with err gets another attempt,
// after waiting out the backoff. It takes a budget slot for that attempt.
func (r *grpcRetrier) retry(err error) bool {
	r.attempts++
	if r.attempts >= min(int(r.policy.NumRetries)+1, maxGRPCAttempts) || r.ctx.Err() != nil {
		return false
	}
	if !r.retriable(err) {
		return false
	}
	cs := r.call.cluster.Load()
	if cs == nil || !cs.acquireRetry() {
		return false // no pick happened, or the cluster's retry budget is spent
	}
	r.slot = cs
	if sleepContext(r.ctx, retryBackoff(r.policy, r.attempts)) != nil {
		r.releaseSlot()
		return false
	}
	r.call.cluster.Store(nil)
	return true
}

func (r *grpcRetrier) nextAttemptContext() context.Context {
	ctx := withCallInfo(r.ctx, r.call)
	return metadata.AppendToOutgoingContext(ctx, previousAttemptsHeader, strconv.Itoa(r.attempts))
}

func (r *grpcRetrier) releaseSlot() {
	if r.slot != nil {
		r.slot.releaseRetry()
		r.slot = nil
	}
}

// finishingStream calls finish once the stream has ended.
type finishingStream struct {
	grpc.ClientStream
	finish func()
}

func (s *finishingStream) RecvMsg(m any) error {
	err := s.ClientStream.RecvMsg(m)
	if err != nil {
		s.finish()
	}
	return err
}

// retryingStream replays a stream on a new attempt when its first RecvMsg
// fails with a retriable status; see StreamClientInterceptor.
type retryingStream struct {
	retrier   *grpcRetrier
	cancel    context.CancelFunc
	newStream func(context.Context) (grpc.ClientStream, error)

	mu         sync.Mutex
	cur        grpc.ClientStream
	sent       []any
	closedSend bool
	sendFailed bool
	committed  bool
}

func (s *retryingStream) current() grpc.ClientStream {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cur
}

func (s *retryingStream) Header() (metadata.MD, error) { return s.current().Header() }
func (s *retryingStream) Trailer() metadata.MD         { return s.current().Trailer() }
func (s *retryingStream) Context() context.Context     { return s.current().Context() }

func (s *retryingStream) SendMsg(m any) error {
	s.mu.Lock()
	cur := s.cur
	if !s.committed {
		if len(s.sent) < maxReplayedMessages {
			s.sent = append(s.sent, m)
		} else {
			s.commitLocked()
		}
	}
	s.mu.Unlock()
	err := cur.SendMsg(m)
	if err != nil {
		s.mu.Lock()
		s.sendFailed = true
		s.mu.Unlock()
	}
	return err
}

func (s *retryingStream) CloseSend() error {
	s.mu.Lock()
	s.closedSend = true
	cur := s.cur
	s.mu.Unlock()
	return cur.CloseSend()
}

func (s *retryingStream) commitLocked() {
	s.committed = true
	s.sent = nil
	s.retrier.releaseSlot()
}

func (s *retryingStream) RecvMsg(m any) error {
	for {
		cur := s.current()
		err := cur.RecvMsg(m)
		s.mu.Lock()
		if err == nil {
			if !s.committed {
				s.commitLocked()
			}
			s.mu.Unlock()
			return nil
		}
		replayable := !s.committed && s.closedSend && !s.sendFailed && !errors.Is(err, io.EOF)
		sent := s.sent
		s.retrier.releaseSlot()
		s.mu.Unlock()
		if !replayable || !s.retrier.retry(err) {
			s.finish()
			return err
		}
		for {
			next, err := s.replay(sent)
			if err == nil {
				s.mu.Lock()
				s.cur = next
				s.mu.Unlock()
				break
			}
			// The new attempt could not even start; it counts as one.
			s.retrier.releaseSlot()
			if !s.retrier.retry(err) {
				s.finish()
				return err
			}
		}
	}
}

// replay starts a new attempt and sends it what the caller sent. A send
// error is not returned: the new attempt's RecvMsg reports its status.
func (s *retryingStream) replay(sent []any) (grpc.ClientStream, error) {
	cs, err := s.newStream(s.retrier.nextAttemptContext())
	if err != nil {
		return nil, err
	}
	for _, m := range sent {
		if cs.SendMsg(m) != nil {
			return cs, nil
		}
	}
	_ = cs.CloseSend()
	return cs, nil
}

func (s *retryingStream) finish() {
	s.mu.Lock()
	s.retrier.releaseSlot()
	s.mu.Unlock()
	s.cancel()
}
