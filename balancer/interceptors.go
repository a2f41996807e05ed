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
// this resolver, linked to the channel's interceptors, which route each
// call once, against the routing table the channel's LB policy published,
// and apply the route's timeout (gRFC A31: the deadline becomes the
// earlier of the caller's and the route's), faults (gRFC A33) and retry
// policy (gRFC A44: retry on the policy's status codes, at most
// num_retries times and at most 5 attempts, with exponential backoff and
// jitter, within the cluster's retry budget). Call it once per channel.
//
// A stream is retried only before any response message arrived, and only
// when the client had finished sending (CloseSend) at most 64 messages,
// which are replayed: after that the stream is committed to its attempt.
// The route timeout bounds the whole stream.
func (b *ResolverBuilder) DialOptions() []grpc.DialOption {
	return b.DialOptionsAround(nil, nil)
}

// DialOptionsAround returns what DialOptions does, with unary and stream
// (when not nil) run for every attempt inside the routing interceptors, as
// if chained after them, but called directly: grpc-go builds a closure per
// call to chain interceptors, this spares it for unary calls.
func (b *ResolverBuilder) DialOptionsAround(unary grpc.UnaryClientInterceptor, stream grpc.StreamClientInterceptor) []grpc.DialOption {
	link := newChannelLink()
	opts := []grpc.DialOption{
		grpc.WithResolvers(&linkedBuilder{b: b, link: link}),
		grpc.WithChainUnaryInterceptor(b.unaryInterceptorAround(link, unary)),
		grpc.WithChainStreamInterceptor(b.streamInterceptor(link)),
	}
	if stream != nil {
		// Streams pay for a closure anyway (the retrying stream's own),
		// so the stream interceptor is simply chained.
		opts = append(opts, grpc.WithChainStreamInterceptor(stream))
	}
	return opts
}

// invokeAttempt runs one attempt of a unary call: through inner when there
// is one, else straight to grpc-go's invoker.
func invokeAttempt(inner grpc.UnaryClientInterceptor, ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts []grpc.CallOption) error {
	if inner != nil {
		return inner(ctx, method, req, reply, cc, invoker, opts...)
	}
	return invoker(ctx, method, req, reply, cc, opts...)
}

// route decides the route of a call on cc: nil when cc is not a mesh
// channel or has nothing to route with, and the picker decides.
func (link *channelLink) route(ctx context.Context, cc *grpc.ClientConn, method string) (*decidedContext, error) {
	if !strings.HasPrefix(cc.Target(), Scheme+":///") {
		return nil, nil
	}
	t, err := link.current(ctx, cc.Connect)
	if err != nil {
		return nil, err
	}
	return decide(ctx, t, method)
}

func (b *ResolverBuilder) unaryInterceptor(link *channelLink) grpc.UnaryClientInterceptor {
	return b.unaryInterceptorAround(link, nil)
}

// unaryInterceptorAround routes unary calls, running each attempt through
// inner when it is not nil.
func (b *ResolverBuilder) unaryInterceptorAround(link *channelLink, inner grpc.UnaryClientInterceptor) grpc.UnaryClientInterceptor {
	return func(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn, invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
		dc, err := link.route(ctx, cc, method)
		if err != nil {
			return err
		}
		if dc == nil {
			return invokeAttempt(inner, ctx, method, req, reply, cc, invoker, opts)
		}
		d := &dc.d
		ctx = dc
		if t := d.route.Action.Timeout; t > 0 {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, t)
			defer cancel()
		}
		abort, release, err := b.faults.inject(ctx, d.table.router, d.route, d.headers, true)
		defer release()
		if err != nil {
			return status.FromContextError(err).Err()
		}
		if abort != nil {
			return abort.grpcStatus()
		}
		policy := d.route.Action.RetryPolicy
		if policy == nil {
			return invokeAttempt(inner, ctx, method, req, reply, cc, invoker, opts)
		}
		r := &grpcRetrier{ctx: ctx, policy: policy, cluster: d.table.clusters[d.cluster].state}
		attemptCtx := ctx
		for {
			err := r.invoke(attemptCtx, func(ctx context.Context) error {
				return invokeAttempt(inner, ctx, method, req, reply, cc, invoker, opts)
			})
			r.releaseSlot()
			if err == nil || !r.retry(err) {
				return err
			}
			attemptCtx = r.nextAttemptContext()
		}
	}
}

func (b *ResolverBuilder) streamInterceptor(link *channelLink) grpc.StreamClientInterceptor {
	return func(ctx context.Context, desc *grpc.StreamDesc, cc *grpc.ClientConn, method string, streamer grpc.Streamer, opts ...grpc.CallOption) (grpc.ClientStream, error) {
		dc, err := link.route(ctx, cc, method)
		if err != nil {
			return nil, err
		}
		if dc == nil {
			return streamer(ctx, desc, cc, method, opts...)
		}
		d := &dc.d
		ctx = dc
		cancel := context.CancelFunc(func() {})
		if t := d.route.Action.Timeout; t > 0 {
			ctx, cancel = context.WithTimeout(ctx, t)
		}
		// A stream's fault counts as active until its delay ends.
		abort, release, err := b.faults.inject(ctx, d.table.router, d.route, d.headers, true)
		release()
		if err != nil {
			cancel()
			return nil, status.FromContextError(err).Err()
		}
		if abort != nil {
			cancel()
			return nil, abort.grpcStatus()
		}
		policy := d.route.Action.RetryPolicy
		if policy == nil || (len(policy.GRPCCodes) == 0 && !policy.RefusedStream) {
			cs, err := streamer(ctx, desc, cc, method, opts...)
			if err != nil {
				cancel()
				return nil, err
			}
			return &finishingStream{ClientStream: cs, finish: cancel}, nil
		}
		r := &grpcRetrier{ctx: ctx, policy: policy, cluster: d.table.clusters[d.cluster].state}
		s := &retryingStream{
			retrier: r, cancel: cancel,
			newStream: func(ctx context.Context) (grpc.ClientStream, error) {
				return streamer(ctx, desc, cc, method, opts...)
			},
		}
		attemptCtx := ctx
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

// grpcRetrier decides, attempt after attempt, whether an RPC is retried. It
// lives for one RPC and is used by one goroutine at a time.
type grpcRetrier struct {
	ctx    context.Context // the RPC's, with the route timeout applied
	policy *xdsclient.RetryPolicy
	// cluster is the call's decided cluster, whose budget retries spend.
	cluster  *clusterState
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
	if !r.cluster.acquireRetry() {
		return false // the cluster's retry budget is spent
	}
	r.slot = r.cluster
	if sleepContext(r.ctx, retryBackoff(r.policy, r.attempts)) != nil {
		r.releaseSlot()
		return false
	}
	return true
}

func (r *grpcRetrier) nextAttemptContext() context.Context {
	return metadata.AppendToOutgoingContext(r.ctx, previousAttemptsHeader, strconv.Itoa(r.attempts))
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
// fails with a retriable status; see DialOptions.
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
