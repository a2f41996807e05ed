package balancer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/connectivity"

	"mesh/internal/routeinfo"
	"mesh/xdsclient"
)

// DialTLSFunc opens a connection to addr, an endpoint of cluster. When tls
// is nil the cluster is plaintext and the function returns a plain
// connection; otherwise it does the cluster's (m)TLS handshake and returns
// a *tls.Conn, whose negotiated ALPN protocol ("h2" or "http/1.1") picks
// HTTP/2 or HTTP/1.1. transport.NewHTTPDialer returns one.
type DialTLSFunc func(ctx context.Context, network, addr, cluster string, tls *xdsclient.UpstreamTLS) (net.Conn, error)

// ErrClosed is returned by a RoundTripper after Close.
var ErrClosed = errors.New("balancer: closed")

// UnavailableError is what the RoundTripper returns when it cannot send a
// request at all: no route matches, the cluster has no usable endpoint, or
// its circuit breaker is open. It stands for a 503; it never comes with a
// response.
type UnavailableError struct{ Err error }

func (e *UnavailableError) Error() string { return "mesh: unavailable: " + e.Err.Error() }

// Unwrap returns the cause (ErrNoRoute, ErrCircuitOpen, ...).
func (e *UnavailableError) Unwrap() error { return e.Err }

// StatusCode is the HTTP status a proxy would have answered with: 503.
func (e *UnavailableError) StatusCode() int { return http.StatusServiceUnavailable }

// RoundTripper is an http.RoundTripper that routes "http://host:port/..."
// requests the way the mesh resolver routes gRPC channels: it watches the
// listener "host:port", matches each request against its routes (path,
// headers, query parameters), picks a weighted cluster and an endpoint
// round robin, and sends the request over a connection pool per endpoint,
// dialled with the caller's DialTLSFunc. It applies the route's timeout
// and retry policy and the cluster's circuit breaker.
//
// Config changes never fail a request: a table that sends traffic to a
// cluster without usable endpoints waits (up to 10 s) while
// the old table serves.
type RoundTripper struct {
	client XDSClient
	dial   DialTLSFunc
	cfg    *config
	logger *slog.Logger
	// channelID is what ring_hash routes with a channel ID hash policy hash.
	channelID uint64
	faults    *faultInjector
	// waiting counts requests held for their cluster to be ready.
	waiting atomic.Int64

	mu       sync.Mutex
	closed   bool
	channels map[string]*httpChannel
}

var _ http.RoundTripper = (*RoundTripper)(nil)

// NewRoundTripper returns a RoundTripper that routes with client and dials
// endpoints with dial. Close it to stop its watches and close its
// connections.
func NewRoundTripper(client XDSClient, dial DialTLSFunc, opts ...RoundTripperOption) *RoundTripper {
	cfg := newConfig(opts)
	return &RoundTripper{client: client, dial: dial, cfg: cfg, logger: cfg.logger, channelID: rand.Uint64(), channels: map[string]*httpChannel{}, faults: &faultInjector{clock: cfg.clock}}
}

// RoundTrip sends req to an endpoint of the cluster its route picks.
// Requests are retried (per the route's retry policy) only when their body
// can be replayed: no body, or GetBody set.
func (rt *RoundTripper) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL == nil {
		closeBody(req)
		return nil, errors.New("mesh round tripper: request has no URL")
	}
	if req.URL.Scheme != "http" {
		closeBody(req)
		return nil, fmt.Errorf("mesh round tripper: %q: unsupported scheme %q (use http://; the mesh adds TLS)", req.URL.Redacted(), req.URL.Scheme)
	}
	authority := req.URL.Host
	if _, _, err := net.SplitHostPort(authority); err != nil {
		authority = net.JoinHostPort(req.URL.Hostname(), "80")
	}
	ch, err := rt.channel(authority)
	if err != nil {
		closeBody(req)
		return nil, err
	}
	for {
		t, err := ch.waitTable(req.Context())
		if err != nil {
			closeBody(req)
			return nil, err
		}
		idx, route, err := t.router.pickRequest(req)
		if err != nil {
			closeBody(req)
			return nil, &UnavailableError{Err: err}
		}
		c := &t.clusters[idx]
		if len(c.ready) == 0 {
			// Like gRPC's wait-for-ready: the cluster has no endpoint yet
			// (or none usable); hold the request for the next table, for
			// as long as its context allows.
			ch.rt.waiting.Add(1)
			select {
			case <-t.replaced:
				ch.rt.waiting.Add(-1)
				continue
			case <-req.Context().Done():
				ch.rt.waiting.Add(-1)
				closeBody(req)
				return nil, &UnavailableError{Err: fmt.Errorf("waiting for %s to be ready: %w (%w)", req.URL.Redacted(), req.Context().Err(), c.failErr)}
			}
		}
		return ch.send(req, authority, t.router, c, route)
	}
}

// Close stops every watch and closes every connection. Requests in flight
// fail; responses being read may be cut short.
func (rt *RoundTripper) Close() error {
	rt.mu.Lock()
	if rt.closed {
		rt.mu.Unlock()
		return nil
	}
	rt.closed = true
	channels := rt.channels
	rt.channels = nil
	rt.mu.Unlock()
	for _, ch := range channels {
		ch.close()
	}
	return nil
}

// CloseIdleConnections closes idle connections to every endpoint; http.Client
// calls it.
func (rt *RoundTripper) CloseIdleConnections() {
	for _, ch := range rt.liveChannels() {
		ch.pub.forEachConn(func(ep *endpointTransport) { ep.transport.CloseIdleConnections() })
	}
}

// liveChannels copies rt's channels, so that callers take no channel's lock
// while holding rt's.
func (rt *RoundTripper) liveChannels() []*httpChannel {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	channels := make([]*httpChannel, 0, len(rt.channels))
	for _, ch := range rt.channels {
		channels = append(channels, ch)
	}
	return channels
}

func (rt *RoundTripper) channel(authority string) (*httpChannel, error) {
	rt.mu.Lock()
	defer rt.mu.Unlock()
	if rt.closed {
		return nil, ErrClosed
	}
	if rt.client == nil {
		return nil, errors.New("mesh round tripper: xds client is nil")
	}
	if ch := rt.channels[authority]; ch != nil {
		return ch, nil
	}
	ch := &httpChannel{
		rt:        rt,
		authority: authority,
		logger:    rt.logger.With("authority", authority),
		ready:     make(chan struct{}),
	}
	ch.pub = newPublisher[*endpointTransport, *endpointTransport](ch, rt.cfg, ch.logger, rt.channelID)
	ch.pub.waitForEndpoints = true
	ch.agg = newAggregator(rt.client, rt.cfg, authority, ch.logger,
		func(snap *snapshot) { ch.pub.update(snap, ch.logger) }, ch.pub.fail)
	rt.channels[authority] = ch
	return ch, nil
}

// httpChannel is the RoundTripper's state for one authority, the HTTP
// front-end of the routing core: an aggregator feeding snapshots to a
// publisher, which owns the connection pools of their endpoints.
type httpChannel struct {
	rt        *RoundTripper
	authority string
	logger    *slog.Logger
	agg       *aggregator
	pub       *publisher[*endpointTransport, *endpointTransport]

	// table is what requests use: one atomic load each.
	table     atomic.Pointer[httpTable]
	ready     chan struct{} // closed once table is set
	readyOnce sync.Once
}

// httpTable is the HTTP front-end's routing table.
type httpTable = routeTable[*endpointTransport]

// endpointTransport is the connection pool of one (cluster, endpoint, TLS
// settings).
type endpointTransport struct {
	k         scKey
	scheme    string
	transport *http.Transport
	// active counts requests in flight to the endpoint (least_request).
	active atomic.Int64
	// healthState is a connectivity.State: the outcome of the last dial.
	healthState atomic.Int32
	// route is what telemetry reports for first attempts to the endpoint;
	// made once, so that requests do not allocate it.
	route *routeinfo.Info
}

func (ep *endpointTransport) key() scKey { return ep.k }

// routingState is READY: connections are dialled per request, so every
// endpoint the control plane lists can be routed to.
func (ep *endpointTransport) routingState() connState {
	return connState{state: connectivity.Ready}
}

func (ep *endpointTransport) health() connectivity.State {
	return connectivity.State(ep.healthState.Load())
}

func (ep *endpointTransport) inFlight() *atomic.Int64 { return &ep.active }

func (ep *endpointTransport) pickable(*clusterState, *endpointStats) *endpointTransport { return ep }

// waitTable returns the current table, waiting for the first one up to the
// publish timeout or ctx's end.
func (ch *httpChannel) waitTable(ctx context.Context) (*httpTable, error) {
	if t := ch.table.Load(); t != nil {
		return usable(t)
	}
	timer := time.NewTimer(ch.rt.cfg.publishTimeout)
	defer timer.Stop()
	select {
	case <-ch.ready:
		return usable(ch.table.Load())
	case <-ctx.Done():
		return nil, fmt.Errorf("mesh round tripper: waiting for the routes of %q: %w", ch.authority, ctx.Err())
	case <-timer.C:
		return nil, &UnavailableError{Err: fmt.Errorf("no routes for %q (listener %q) from the control plane after %v; %s",
			ch.authority, ch.rt.cfg.listenerName(ch.authority), ch.rt.cfg.publishTimeout, targetHint)}
	}
}

func usable(t *httpTable) (*httpTable, error) {
	if t.err != nil {
		return nil, &UnavailableError{Err: t.err}
	}
	return t, nil
}

// setTable publishes t and wakes the requests waiting on the table it
// replaces; the publisher calls it under its lock.
func (ch *httpChannel) setTable(t *httpTable, _ connectivity.State) {
	old := ch.table.Swap(t)
	ch.readyOnce.Do(func() { close(ch.ready) })
	if old != nil {
		close(old.replaced)
	}
}

// notify has nothing to do: requests load the table themselves.
func (ch *httpChannel) notify() {}

func (ch *httpChannel) connect(*endpointTransport) {}

func (ch *httpChannel) closeConn(ep *endpointTransport) { ep.transport.CloseIdleConnections() }

// busy keeps a drained pool open while requests use it: closing it now
// would leave their connections idle for IdleConnTimeout once they finish.
func (ch *httpChannel) busy(ep *endpointTransport) bool { return ep.active.Load() > 0 }

// newConn makes the connection pool of k; it dials on demand.
func (ch *httpChannel) newConn(k scKey) (*endpointTransport, error) {
	ep := &endpointTransport{k: k, route: routeinfo.New(k.cluster, k.addr)}
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		// Only the first dial shows CONNECTING: later ones keep the last
		// outcome until theirs is known.
		ep.healthState.CompareAndSwap(int32(connectivity.Idle), int32(connectivity.Connecting))
		conn, err := ch.rt.dial(ctx, network, addr, k.cluster, k.tls)
		if err != nil {
			if ctx.Err() != nil {
				// The request gave up; that says nothing of the endpoint.
				ep.healthState.CompareAndSwap(int32(connectivity.Connecting), int32(connectivity.Idle))
			} else {
				ep.healthState.Store(int32(connectivity.TransientFailure))
			}
			return nil, &connectError{cluster: k.cluster, addr: addr, err: err}
		}
		ep.healthState.Store(int32(connectivity.Ready))
		return conn, nil
	}
	tr := &http.Transport{
		Proxy:               nil,
		ForceAttemptHTTP2:   true,
		MaxIdleConnsPerHost: 256,
		IdleConnTimeout:     ch.rt.cfg.idleConnTimeout,
		Protocols:           new(http.Protocols),
	}
	ep.transport = tr
	if k.tls == nil {
		ep.scheme = "http"
		tr.DialContext = dial
		if ch.rt.cfg.plaintextHTTP2 {
			tr.Protocols.SetUnencryptedHTTP2(true)
		} else {
			tr.Protocols.SetHTTP1(true)
		}
	} else {
		ep.scheme = "https"
		tr.DialTLSContext = dial
		tr.Protocols.SetHTTP1(true)
		tr.Protocols.SetHTTP2(true)
	}
	return ep, nil
}

func (ch *httpChannel) close() {
	ch.agg.Close() // no callbacks after this returns
	// Requests that raced with Close fail instead of waiting for a table.
	ch.pub.close(ErrClosed)
}

// connectError marks a failure to connect (or to handshake), which the
// retry condition "connect-failure" covers.
type connectError struct {
	cluster, addr string
	err           error
}

func (e *connectError) Error() string {
	return fmt.Sprintf("cluster %q endpoint %s: connect: %v", e.cluster, e.addr, e.err)
}

func (e *connectError) Unwrap() error { return e.err }

// send runs the attempts of one request to cluster c.
func (ch *httpChannel) send(req *http.Request, authority string, router *Router, c *routeCluster[*endpointTransport], route *xdsclient.Route) (*http.Response, error) {
	ctx := req.Context()
	cancel := context.CancelFunc(func() {})
	if t := route.Action.Timeout; t > 0 {
		ctx, cancel = context.WithTimeout(ctx, t)
	}
	abort, releaseFault, err := ch.rt.faults.inject(ctx, router, route, HTTPHeaders(req.Header), false)
	releaseFault()
	if err != nil {
		cancel()
		closeBody(req)
		return nil, fmt.Errorf("mesh round tripper: %s: during an injected delay: %w", req.URL.Redacted(), err)
	}
	if abort != nil {
		cancel()
		closeBody(req)
		return abort.httpResponse(req), nil
	}
	policy := route.Action.RetryPolicy
	replayable := req.Body == nil || req.Body == http.NoBody || req.GetBody != nil
	maxAttempts := 1
	if policy != nil && replayable {
		maxAttempts = int(policy.NumRetries) + 1
	}
	cs := c.state
	retrySlot := false
	releaseRetry := func() {
		if retrySlot {
			cs.releaseRetry()
			retrySlot = false
		}
	}
	host := req.Host
	if host == "" {
		host = authority
	}
	var hash uint64
	var hashed bool
	if c.chooser.policy == xdsclient.LBRingHash && len(route.Action.HashPolicies) > 0 {
		hash, hashed = requestHash(route.Action.HashPolicies, HTTPHeaders(req.Header), req.URL.Query(), ch.rt.channelID)
	}
	for attempt := 1; ; attempt++ {
		if attempt > 1 && hashed {
			// A retry goes to another endpoint, as Envoy's ring hash retries do.
			hash = hash*fnvPrime + uint64(attempt)
		}
		// per_try_timeout bounds each attempt, its body included.
		actx, attemptCancel := ctx, context.CancelFunc(func() {})
		if policy != nil && policy.PerTryTimeout > 0 {
			actx, attemptCancel = context.WithTimeout(ctx, policy.PerTryTimeout)
		}
		resp, err := ch.attempt(actx, req, host, c, attempt, hash, hashed)
		releaseRetry()
		timedOut := err != nil && errors.Is(actx.Err(), context.DeadlineExceeded) && ctx.Err() == nil
		retry := attempt < maxAttempts && ctx.Err() == nil && retriableHTTP(policy, resp, err, timedOut)
		if retry && cs.acquireRetry() {
			retrySlot = true
			status := 0
			if resp != nil {
				status = resp.StatusCode
				discard(resp.Body)
			}
			attemptCancel()
			if sleepContext(ctx, retryBackoff(policy, attempt)) == nil {
				continue
			}
			releaseRetry()
			cancel()
			if status == 0 {
				return nil, err
			}
			// The response was discarded; report why it was not retried.
			return nil, fmt.Errorf("mesh round tripper: retry of %s after status %d: %w", req.URL.Redacted(), status, ctx.Err())
		}
		if err != nil {
			attemptCancel()
			cancel()
			return nil, err
		}
		resp.Request = req
		// The route timeout (and per_try_timeout) covers reading the body too.
		resp.Body = &finishingBody{ReadCloser: resp.Body, finish: func() {
			attemptCancel()
			cancel()
		}}
		return resp, nil
	}
}

// attempt sends one copy of req to the next endpoint of c. On success the
// request stays counted in flight to the cluster until the response body
// is closed.
func (ch *httpChannel) attempt(ctx context.Context, req *http.Request, host string, c *routeCluster[*endpointTransport], attempt int, hash uint64, hashed bool) (*http.Response, error) {
	n := uint32(len(c.ready))
	if n == 0 {
		closeBody(req)
		return nil, &UnavailableError{Err: c.failErr}
	}
	cs := c.state
	if !cs.acquire() {
		closeBody(req)
		return nil, &UnavailableError{Err: cs.overLimitErr}
	}
	i := c.chooser.choose(int(n), &cs.next, hash, hashed)
	ep := c.ready[i]
	info := ep.route
	if attempt > 1 {
		info = routeinfo.New(ep.k.cluster, ep.k.addr)
		info.Retries = attempt - 1
	}
	routeinfo.Set(ctx, info)
	var st *endpointStats
	if c.stats != nil {
		st = c.stats[i]
	}
	ep.active.Add(1)
	release := func() {
		ep.active.Add(-1)
		cs.release()
	}
	out := req.Clone(ctx)
	out.URL.Scheme = ep.scheme
	out.URL.Host = ep.k.addr
	out.Host = host
	out.RequestURI = ""
	if attempt > 1 && req.Body != nil && req.Body != http.NoBody {
		body, err := req.GetBody()
		if err != nil {
			release()
			return nil, fmt.Errorf("mesh round tripper: replaying the body of %s: %w", req.URL.Redacted(), err)
		}
		out.Body = body
	}
	resp, err := ep.transport.RoundTrip(out)
	// A 5xx or no response counts against the endpoint (gRFC A50 counts
	// RPC failures; Envoy counts 5xx for HTTP).
	st.record(err == nil && resp.StatusCode < 500)
	if err != nil {
		release()
		return nil, err
	}
	resp.Body = &finishingBody{ReadCloser: resp.Body, finish: release}
	return resp, nil
}

// retriableHTTP reports whether the policy retries an attempt that ended
// with resp or err; timedOut says the attempt ran out of its
// per_try_timeout, which Envoy retries as a 504. A response here still
// holds its cluster slot.
func retriableHTTP(p *xdsclient.RetryPolicy, resp *http.Response, err error, timedOut bool) bool {
	if p == nil {
		return false
	}
	if err != nil {
		var unavailable *UnavailableError
		if errors.As(err, &unavailable) {
			return false
		}
		if timedOut {
			return p.HTTP5xx || p.HTTPGatewayError
		}
		if refusedStream(err) {
			// Refused before it was processed: safe whatever the method.
			return p.RefusedStream || p.HTTP5xx || p.HTTPReset
		}
		var connect *connectError
		if errors.As(err, &connect) {
			return p.HTTPConnectFailure || p.HTTPReset || p.HTTP5xx || p.HTTPGatewayError
		}
		return p.HTTPReset || p.HTTP5xx
	}
	return p.RetriesHTTPStatus(resp.StatusCode)
}

func closeBody(req *http.Request) {
	if req.Body != nil {
		_ = req.Body.Close()
	}
}

// discard reads a little of a retried response so its connection can be
// reused, then closes it.
func discard(body io.ReadCloser) {
	_, _ = io.CopyN(io.Discard, body, 4<<10)
	_ = body.Close()
}

// finishingBody calls finish once, when the body is closed.
type finishingBody struct {
	io.ReadCloser
	once   sync.Once
	finish func()
}

func (b *finishingBody) Close() error {
	err := b.ReadCloser.Close()
	b.once.Do(b.finish)
	return err
}
