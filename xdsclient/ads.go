package xdsclient

import (
	"context"
	"fmt"
	"slices"
	"time"

	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/anypb"
)

const typeURLResourceWrapper = "type.googleapis.com/envoy.service.discovery.v3.Resource"

// typeState is the per-type protocol state of one ADS stream.
type typeState struct {
	version string // last ACKed version_info; survives reconnects
	nonce   string // last response nonce on the current stream
	nack    error  // pending error_detail for the next request
	dirty   bool   // a request for this type is due
}

// adsChannel is the state-of-the-world ADS stream to one xDS server. Its
// mutable fields are guarded by the owning Client's mu.
type adsChannel struct {
	c      *Client
	server ServerConfig
	cc     *grpc.ClientConn
	wake   chan struct{}
	types  [numKinds]typeState
}

func newADSChannel(c *Client, server ServerConfig) (*adsChannel, error) {
	cc, err := grpc.NewClient(server.URI, grpc.WithTransportCredentials(c.creds))
	if err != nil {
		return nil, fmt.Errorf("xds: server %q: %w", server.URI, err)
	}
	return &adsChannel{c: c, server: server, cc: cc, wake: make(chan struct{}, 1)}, nil
}

func (a *adsChannel) markDirtyLocked(kind resourceKind) {
	a.types[kind].dirty = true
	select {
	case a.wake <- struct{}{}:
	default:
	}
}

func (a *adsChannel) responseHandledLocked(kind resourceKind, version, nonce string, nack error) {
	ts := &a.types[kind]
	ts.nonce = nonce
	if nack == nil {
		ts.version = version
		ts.nack = nil
	} else {
		// gRFC A46: NACK the whole response, keep the previous version.
		ts.nack = nack
	}
	a.markDirtyLocked(kind)
}

// run keeps a stream open until the client closes, reconnecting with backoff.
func (a *adsChannel) run() {
	defer a.c.wg.Done()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-a.c.stop:
			cancel()
		case <-ctx.Done():
		}
	}()

	attempt := 0
	for {
		gotResponse, err := a.runStream(ctx)
		if ctx.Err() != nil {
			return
		}
		a.c.log.Warn("xds: ADS stream failed", "server", a.server.URI, "error", err)
		a.c.mu.Lock()
		a.c.streamDownLocked(fmt.Errorf("%w: server %s: %w", ErrStreamFailed, a.server.URI, err))
		a.c.mu.Unlock()
		if gotResponse {
			attempt = 0
		}
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

// runStream runs one stream until it fails; gotResponse reports whether it
// received anything, which resets the backoff.
func (a *adsChannel) runStream(ctx context.Context) (gotResponse bool, err error) {
	sctx, cancel := context.WithCancel(ctx)
	stream, err := discoverypb.NewAggregatedDiscoveryServiceClient(a.cc).StreamAggregatedResources(sctx)
	if err != nil {
		cancel()
		return false, err
	}
	a.c.mu.Lock()
	for k := range a.types {
		a.types[k].nonce = ""
		a.types[k].nack = nil
		a.markDirtyLocked(resourceKind(k))
	}
	a.c.mu.Unlock()

	senderDone := make(chan struct{})
	go func() {
		defer close(senderDone)
		a.sendLoop(sctx, cancel, stream)
	}()
	defer func() {
		cancel()
		<-senderDone
	}()

	for {
		resp, err := stream.Recv()
		if err != nil {
			return gotResponse, err
		}
		if !gotResponse {
			gotResponse = true
			a.c.connected.Store(true)
			a.c.log.Info("xds: ADS stream up", "server", a.server.URI)
		}
		a.c.handleResponse(a, resp.GetTypeUrl(), resp.GetVersionInfo(), resp.GetNonce(), resp.GetResources())
	}
}

// sendLoop sends the due requests whenever woken. Requests are built at
// send time from the current subscriptions, so bursts of changes coalesce.
func (a *adsChannel) sendLoop(ctx context.Context, cancel context.CancelFunc, stream discoverypb.AggregatedDiscoveryService_StreamAggregatedResourcesClient) {
	sentNode := false
	for {
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
			names := make([]string, 0, len(a.c.watches[kind]))
			for name, st := range a.c.watches[kind] {
				if !st.retired {
					names = append(names, name)
				}
			}
			if len(names) == 0 {
				// An empty list on a SotW stream is a wildcard request for
				// LDS and CDS (istiod would send every resource), so a type
				// with no names left gets no request at all.
				continue
			}
			// This request tells the server which names we dropped.
			for name, st := range a.c.watches[kind] {
				if st.retired {
					delete(a.c.watches[kind], name)
				}
			}
			slices.Sort(names)
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
			if !sentNode {
				req.Node = a.c.node
				sentNode = true
			}
			reqs = append(reqs, req)
			kinds = append(kinds, kind)
		}
		a.c.mu.Unlock()

		for _, req := range reqs {
			if err := stream.Send(req); err != nil {
				// Recv reports the stream's real error.
				cancel()
				return
			}
		}
		if len(kinds) > 0 {
			a.c.mu.Lock()
			for _, kind := range kinds {
				a.c.markRequestedLocked(kind)
			}
			a.c.mu.Unlock()
		}

		select {
		case <-ctx.Done():
			return
		case <-a.wake:
		}
	}
}

// unwrapResource accepts a resource either bare or inside the
// discovery Resource wrapper, and checks its type.
func unwrapResource(r *anypb.Any, typeURL string) (*anypb.Any, error) {
	if r.GetTypeUrl() == typeURLResourceWrapper {
		w := &discoverypb.Resource{}
		if err := r.UnmarshalTo(w); err != nil {
			return nil, fmt.Errorf("invalid Resource wrapper: %w", err)
		}
		r = w.GetResource()
	}
	if r.GetTypeUrl() != typeURL {
		return nil, fmt.Errorf("type_url %q does not match the response's %q", r.GetTypeUrl(), typeURL)
	}
	return r, nil
}
