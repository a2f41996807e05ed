package xdsclient

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/anypb"

	"mesh/xdsclient/internal/lite"
	discoverypb "mesh/xdsclient/internal/lite/envoy/service/discovery/v3"
)

const typeURLResourceWrapper = "type.googleapis.com/envoy.service.discovery.v3.Resource"

// errPrimaryBack ends a stream to a fallback server once the primary
// server is reachable again (gRFC A71).
var errPrimaryBack = errors.New("xds: primary server is reachable again")

// typeState is the per-type protocol state of one ADS stream.
type typeState struct {
	version string // last ACKed version_info (SotW); survives reconnects to the same server
	nonce   string // last response nonce on the current stream
	nack    error  // pending error_detail for the next request
	dirty   bool   // a request for this type is due
	// ackDue is set when a delta response awaits its ACK or NACK.
	ackDue bool
	// namesChanged is set when the watched names changed since the last
	// delta request: only then is the subscription diffed, so an ACK
	// costs the same however many resources are watched.
	namesChanged bool
	// subscribed is what the current delta stream has subscribed to;
	// nil until the first request of this type on the stream.
	subscribed map[string]bool
	// dropped are watched LDS or CDS names a delta server removed, which
	// istiod also drops from the subscription it records; resubscribe
	// asks for them again after a backoff (resubAttempt counts the tries).
	dropped      map[string]bool
	resubscribe  *time.Timer
	resubAttempt int
}

// adsChannel is one ADS stream of the client: to the first reachable
// server of one server set (the top-level xds_servers or an authority's),
// state-of-the-world or delta as that server's features say. Its mutable
// fields are guarded by the owning Client's mu.
type adsChannel struct {
	c       *Client
	set     *serverSet
	servers []*adsServer // one per server of set
	// cancel ends run; Close calls it.
	cancel context.CancelFunc
	// out sends the current stream's requests; nil between streams.
	out   *sender
	types [numKinds]typeState
	// server is the index of the server of the current (or last) stream.
	server int
	// connected: the stream is up and has answered since it (re)opened.
	connected atomic.Bool
}

func newADSChannel(c *Client, set *serverSet) (*adsChannel, error) {
	a := &adsChannel{c: c, set: set, server: -1}
	for i, s := range set.servers {
		srv, err := newADSServer(s, set.creds[i])
		if err != nil {
			return nil, err
		}
		a.servers = append(a.servers, srv)
	}
	return a, nil
}

// namesChangedLocked records that kind's watched names changed.
func (a *adsChannel) namesChangedLocked(kind resourceKind) {
	a.types[kind].namesChanged = true
	a.markDirtyLocked(kind)
}

func (a *adsChannel) markDirtyLocked(kind resourceKind) {
	a.types[kind].dirty = true
	a.kickLocked()
}

func (a *adsChannel) responseHandledLocked(kind resourceKind, version, nonce string, nack error) {
	ts := &a.types[kind]
	ts.nonce = nonce
	ts.ackDue = true
	if nack == nil {
		ts.version = version
		ts.nack = nil
	} else {
		// gRFC A46: NACK the whole response, keep the previous version.
		ts.nack = nack
	}
	a.markDirtyLocked(kind)
}

// deltaRemovedLocked tracks the watched LDS and CDS names a delta
// response removed. istiod takes the names of each LDS or CDS response as
// the client's whole subscription, so a removed name is forgotten there
// and would not be sent when it appears (a cluster named by a route
// before the DestinationRule that defines it). Such names are subscribed
// again after the client's backoff, growing while the server keeps
// removing them, so a server that lacks a name is never asked in a loop.
func (a *adsChannel) deltaRemovedLocked(kind resourceKind, removed []string, received []string) {
	if !a.c.kinds[kind].fullState {
		return
	}
	ts := &a.types[kind]
	for _, name := range received {
		if ts.dropped[name] {
			delete(ts.dropped, name)
			ts.resubAttempt = 0
		}
	}
	for _, name := range removed {
		name = canonicalOrSelf(a.c.kinds[kind].typeURL, name)
		if !ts.subscribed[name] {
			continue
		}
		if ts.dropped == nil {
			ts.dropped = map[string]bool{}
		}
		ts.dropped[name] = true
	}
	if len(ts.dropped) == 0 {
		ts.stopResubscribe()
		return
	}
	if ts.resubscribe != nil {
		return
	}
	delay := a.c.opts.backoff(ts.resubAttempt)
	ts.resubAttempt++
	ts.resubscribe = time.AfterFunc(delay, func() {
		a.c.mu.Lock()
		defer a.c.mu.Unlock()
		if a.c.closed || ts.resubscribe == nil {
			return
		}
		ts.resubscribe = nil
		changed := false
		for name := range ts.dropped {
			if ts.subscribed[name] {
				delete(ts.subscribed, name) // the next request subscribes it again
				changed = true
			}
		}
		clear(ts.dropped)
		if changed {
			a.namesChangedLocked(kind)
		}
	})
}

func (ts *typeState) stopResubscribe() {
	if ts.resubscribe != nil {
		ts.resubscribe.Stop()
		ts.resubscribe = nil
	}
}

// serverURILocked is the URI of the server in use, "" before the first stream.
func (a *adsChannel) serverURILocked() string {
	if a.server < 0 {
		return ""
	}
	return a.set.servers[a.server].URI
}

// hasFeature reports whether the server of a with uri lists feature.
func (a *adsChannel) hasFeature(uri, feature string) bool {
	for _, s := range a.set.servers {
		if s.URI == uri {
			return s.hasFeature(feature)
		}
	}
	return false
}

// run keeps a stream open until the client closes. It prefers the first
// server; when a server cannot be reached it moves to the next one at
// once, and only after the last one fails does it back off and start over
// (gRFC A71). While on a fallback server it watches the primary and
// returns to it as soon as it is reachable.
// ctx is cancelled by Close (through a.cancel).
func (a *adsChannel) run(ctx context.Context) {
	defer a.c.wg.Done()
	attempt, server := 0, 0
	for {
		uri := a.set.servers[server].URI
		gotResponse, err := a.runStream(ctx, server)
		if ctx.Err() != nil {
			return
		}
		if errors.Is(err, errPrimaryBack) {
			a.c.log.Info("xds: leaving fallback server for the primary", "fallback", uri, "primary", a.set.servers[0].URI)
			server, attempt = 0, 0
			continue
		}
		a.c.log.Warn("xds: ADS stream failed", "server", uri, "error", err)
		if !gotResponse && server+1 < len(a.set.servers) {
			server++
			a.c.log.Info("xds: falling back to the next server", "server", a.set.servers[server].URI)
			continue
		}
		a.c.mu.Lock()
		a.c.streamDownLocked(a, fmt.Errorf("%w: server %s: %w", errStreamFailed, uri, err))
		a.c.mu.Unlock()
		if gotResponse {
			attempt = 0
		}
		server = 0
		delay := a.c.opts.backoff(attempt)
		attempt++
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
}

// runStream runs one stream to server until it fails; gotResponse reports
// whether it received anything, which resets the backoff.
func (a *adsChannel) runStream(ctx context.Context, server int) (gotResponse bool, err error) {
	sctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	if server > 0 {
		probeDone := make(chan struct{})
		go func() {
			defer close(probeDone)
			if a.waitReady(sctx) {
				cancel(errPrimaryBack)
			}
		}()
		defer func() {
			cancel(nil)
			<-probeDone
		}()
	}
	delta := a.set.servers[server].hasFeature(ServerFeatureDelta)
	if delta {
		gotResponse, err = a.runDeltaStream(sctx, server)
	} else {
		gotResponse, err = a.runSotWStream(sctx, server)
	}
	if cause := context.Cause(sctx); errors.Is(cause, errPrimaryBack) {
		err = errPrimaryBack
	}
	return gotResponse, err
}

// waitReady reports whether the primary server becomes reachable (a
// connection made, a ping answered) before ctx ends, trying again after
// the client's backoff.
func (a *adsChannel) waitReady(ctx context.Context) bool {
	for attempt := 0; ; attempt++ {
		if a.servers[0].ready(ctx) {
			return true
		}
		t := time.NewTimer(a.c.opts.backoff(attempt))
		select {
		case <-ctx.Done():
			t.Stop()
			return false
		case <-t.C:
		}
	}
}

// startStreamLocked resets the per-stream protocol state for a new
// stream to server. Versions are kept across reconnects to the same
// server and dropped when the server changes: they mean nothing to
// another one.
func (a *adsChannel) startStreamLocked(server int) {
	changed := a.server != server
	a.server = server
	for k := range a.types {
		ts := &a.types[k]
		ts.nonce, ts.nack, ts.ackDue, ts.subscribed, ts.dropped = "", nil, false, nil, nil
		ts.stopResubscribe()
		ts.resubAttempt = 0
		if changed {
			ts.version = ""
		}
		a.namesChangedLocked(resourceKind(k))
	}
	if changed {
		a.c.serverChangedLocked(a)
	}
}

func (a *adsChannel) gotFirstResponse(server int) {
	a.connected.Store(true)
	a.c.log.Info("xds: ADS stream up", "server", a.set.servers[server].URI)
}

func (a *adsChannel) runSotWStream(ctx context.Context, server int) (gotResponse bool, err error) {
	return runStream(ctx, a, server, sotwMethod, func() *discoverypb.DiscoveryResponse { return new(discoverypb.DiscoveryResponse) },
		a.sendSotW,
		func(resp *discoverypb.DiscoveryResponse) {
			a.c.handleResponse(a, resp.GetTypeUrl(), resp.GetVersionInfo(), resp.GetNonce(), resp.GetResources())
		})
}

func (a *adsChannel) runDeltaStream(ctx context.Context, server int) (gotResponse bool, err error) {
	return runStream(ctx, a, server, deltaMethod, func() *discoverypb.DeltaDiscoveryResponse { return new(discoverypb.DeltaDiscoveryResponse) },
		a.sendDelta,
		func(resp *discoverypb.DeltaDiscoveryResponse) {
			a.c.handleDeltaResponse(a, resp.GetTypeUrl(), resp.GetNonce(), resp.GetResources(), resp.GetRemovedResources())
		})
}

// runStream runs one ADS stream (state of the world or delta) on server
// until it fails: this goroutine receives, each response goes to handle,
// and a sender owned by this call, stopped before it returns, sends what
// send builds.
func runStream[Req lite.Encoder, Resp lite.Message](ctx context.Context, a *adsChannel, server int, method string,
	newResp func() Resp,
	send func(stream adsStream[Req, Resp], first bool) (bool, error),
	handle func(Resp),
) (gotResponse bool, err error) {
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := openStream[Req](sctx, a.servers[server], method, newResp)
	if err != nil {
		return false, err
	}
	out := &sender{
		send:     func(needNode bool) (bool, error) { return send(stream, needNode) },
		cancel:   cancel,
		needNode: true,
	}
	a.c.mu.Lock()
	a.startStreamLocked(server)
	a.out = out
	a.kickLocked() // the stream's first requests
	a.c.mu.Unlock()
	defer func() {
		a.c.mu.Lock()
		a.out = nil
		a.c.mu.Unlock()
		cancel()
		stream.close() // unblocks a Send waiting on the connection
		out.wg.Wait()
	}()

	for {
		resp, err := stream.Recv()
		if err != nil {
			return gotResponse, err
		}
		if !gotResponse {
			gotResponse = true
			a.gotFirstResponse(server)
		}
		handle(resp)
	}
}

// sender sends the due requests of one stream. No goroutine waits for
// them: kickLocked starts one when a request falls due and it exits once
// nothing more is, so a quiet stream costs only its receiving goroutine.
// Requests are built at send time from the current subscriptions, so
// bursts of changes coalesce.
type sender struct {
	send   func(needNode bool) (sent bool, err error)
	cancel context.CancelFunc // ends the stream when a send fails
	wg     sync.WaitGroup

	// needNode: nothing has been sent yet, so the next request carries
	// the node. Only the running goroutine touches it; goroutines follow
	// each other through Client.mu.
	needNode bool
	// Guarded by Client.mu:
	running bool // a goroutine is sending
	again   bool // more fell due while it was
	failed  bool // a send failed: the stream is ending
}

// kickLocked has the current stream's sender send what is due. Between
// streams it does nothing: a new stream sends everything due when it opens.
func (a *adsChannel) kickLocked() {
	o := a.out
	switch {
	case o == nil || o.failed:
	case o.running:
		o.again = true
	default:
		o.running = true
		o.wg.Add(1)
		go a.sendDue(o)
	}
}

// sendDue sends until nothing more is due.
func (a *adsChannel) sendDue(o *sender) {
	defer o.wg.Done()
	for {
		sent, err := o.send(o.needNode)
		if sent {
			o.needNode = false
		}
		a.c.mu.Lock()
		if err != nil {
			// Recv reports the stream's real error.
			o.failed = true
			o.cancel()
		}
		if err != nil || !o.again {
			o.running = false
			a.c.mu.Unlock()
			return
		}
		o.again = false
		a.c.mu.Unlock()
	}
}

// watchedNamesLocked returns kind's names that have watchers, sorted, and
// forgets the retired ones: the request being built tells the server.
func (a *adsChannel) watchedNamesLocked(kind resourceKind) []string {
	names := make([]string, 0, len(a.c.watches[kind]))
	for name, st := range a.c.watches[kind] {
		if !st.retired && st.channel == a.set.key {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	return names
}

func (a *adsChannel) dropRetiredLocked(kind resourceKind) {
	for name, st := range a.c.watches[kind] {
		if st.retired && st.channel == a.set.key {
			delete(a.c.watches[kind], name)
		}
	}
}

func (a *adsChannel) sendSotW(stream adsStream[*discoverypb.DiscoveryRequest, *discoverypb.DiscoveryResponse], needNode bool) (bool, error) {
	a.c.mu.Lock()
	var reqs []*discoverypb.DiscoveryRequest
	var kinds []resourceKind
	for k := range a.types {
		kind := resourceKind(k)
		ts := &a.types[k]
		if !ts.dirty {
			continue
		}
		ts.dirty = false
		names := a.watchedNamesLocked(kind)
		if len(names) == 0 {
			// An empty list on a SotW stream is a wildcard request for
			// LDS and CDS (istiod would send every resource), so a type
			// with no names left gets no request at all.
			continue
		}
		a.dropRetiredLocked(kind)
		req := &discoverypb.DiscoveryRequest{
			TypeUrl:       a.c.kinds[kind].typeURL,
			ResourceNames: names,
			VersionInfo:   ts.version,
			ResponseNonce: ts.nonce,
		}
		if ts.nack != nil {
			req.ErrorDetail = &statuspb.Status{Code: int32(codes.InvalidArgument), Message: ts.nack.Error()}
			ts.nack = nil
		}
		ts.ackDue = false
		if needNode && len(reqs) == 0 {
			req.Node = a.c.node
		}
		reqs = append(reqs, req)
		kinds = append(kinds, kind)
	}
	a.c.mu.Unlock()

	for _, req := range reqs {
		if err := stream.Send(req); err != nil {
			return false, err
		}
	}
	a.requested(kinds)
	return len(reqs) > 0, nil
}

// takeNACKLocked returns the pending error_detail of kind, if any, and
// marks its ACK or NACK sent.
func (a *adsChannel) takeNACKLocked(kind resourceKind) *statuspb.Status {
	ts := &a.types[kind]
	var detail *statuspb.Status
	if ts.nack != nil {
		detail = &statuspb.Status{Code: int32(codes.InvalidArgument), Message: ts.nack.Error()}
	}
	ts.ackDue, ts.nack = false, nil
	return detail
}

// deltaAckLocked builds a request that only ACKs or NACKs: the response's
// nonce and, for a NACK, the error; never subscription changes. istiod
// drops a request whose nonce is no longer the last it sent, whole, and
// ignores the names in a NACK; a change riding on either would be lost
// while the client believed it sent.
func (a *adsChannel) deltaAckLocked(kind resourceKind) *discoverypb.DeltaDiscoveryRequest {
	nonce := a.types[kind].nonce
	return &discoverypb.DeltaDiscoveryRequest{TypeUrl: a.c.kinds[kind].typeURL, ResponseNonce: nonce, ErrorDetail: a.takeNACKLocked(kind)}
}

// deltaSubscriptionLocked builds the request that tells the server how
// kind's watched names changed since the last one, or nil if they did not.
// It carries no nonce, so no server can take it for a stale ACK and drop
// it. The first request of a type on a stream subscribes to every watched
// name and lists the versions already held (initial_resource_versions),
// so the server resends only what changed. Later ones subscribe to the
// added names, or, for LDS and CDS, to every watched name: istiod answers
// a change with the newly subscribed resources only and then takes the
// names in that answer as the client's whole LDS or CDS subscription.
func (a *adsChannel) deltaSubscriptionLocked(kind resourceKind, uri string) *discoverypb.DeltaDiscoveryRequest {
	ts := &a.types[kind]
	names := a.watchedNamesLocked(kind)
	first := ts.subscribed == nil
	if first && len(names) == 0 {
		// An empty first request would be a legacy wildcard subscription.
		return nil
	}
	req := &discoverypb.DeltaDiscoveryRequest{TypeUrl: a.c.kinds[kind].typeURL}
	want := make(map[string]bool, len(names))
	added := false
	for _, name := range names {
		want[name] = true
		if !ts.subscribed[name] {
			added = true
			req.ResourceNamesSubscribe = append(req.ResourceNamesSubscribe, name)
		}
	}
	for name := range ts.subscribed {
		if !want[name] {
			req.ResourceNamesUnsubscribe = append(req.ResourceNamesUnsubscribe, name)
		}
	}
	slices.Sort(req.ResourceNamesUnsubscribe)
	ts.subscribed = want
	a.dropRetiredLocked(kind)
	if first {
		for _, name := range names {
			st := a.c.watches[kind][name]
			if st.hasValue && st.version != "" && st.source == uri {
				if req.InitialResourceVersions == nil {
					req.InitialResourceVersions = map[string]string{}
				}
				req.InitialResourceVersions[name] = st.version
			}
		}
		return req
	}
	if !added && len(req.ResourceNamesUnsubscribe) == 0 {
		return nil
	}
	if a.c.kinds[kind].fullState {
		req.ResourceNamesSubscribe = names
	}
	return req
}

// sendDelta sends, per type, the ACK or NACK of the last response and the
// subscription changes since the last request, as separate requests: the
// ACK first, so a server that answers the change does so after it.
func (a *adsChannel) sendDelta(stream adsStream[*discoverypb.DeltaDiscoveryRequest, *discoverypb.DeltaDiscoveryResponse], needNode bool) (bool, error) {
	a.c.mu.Lock()
	uri := a.serverURILocked()
	var reqs []*discoverypb.DeltaDiscoveryRequest
	var kinds []resourceKind
	for k := range a.types {
		kind := resourceKind(k)
		ts := &a.types[k]
		if !ts.dirty {
			continue
		}
		ts.dirty = false
		if ts.ackDue && ts.subscribed != nil {
			reqs = append(reqs, a.deltaAckLocked(kind))
		}
		if !ts.namesChanged {
			continue
		}
		ts.namesChanged = false
		if req := a.deltaSubscriptionLocked(kind, uri); req != nil {
			reqs = append(reqs, req)
			kinds = append(kinds, kind)
		}
	}
	if needNode && len(reqs) > 0 {
		reqs[0].Node = a.c.node
	}
	a.c.mu.Unlock()

	for _, req := range reqs {
		if err := stream.Send(req); err != nil {
			return false, err
		}
	}
	a.requested(kinds)
	return len(reqs) > 0, nil
}

func (a *adsChannel) requested(kinds []resourceKind) {
	if len(kinds) == 0 {
		return
	}
	a.c.mu.Lock()
	for _, kind := range kinds {
		a.c.markRequestedLocked(a, kind)
	}
	a.c.mu.Unlock()
}

// unwrapResource accepts a resource either bare or inside the
// discovery Resource wrapper, and checks its type.
func unwrapResource(r *anypb.Any, typeURL string) (*anypb.Any, error) {
	if r.GetTypeUrl() == typeURLResourceWrapper {
		w := &discoverypb.Resource{}
		if err := unmarshalAny(r, w); err != nil {
			return nil, fmt.Errorf("invalid Resource wrapper: %w", err)
		}
		r = w.GetResource()
	}
	if r.GetTypeUrl() != typeURL {
		return nil, fmt.Errorf("type_url %q does not match the response's %q", r.GetTypeUrl(), typeURL)
	}
	return r, nil
}
