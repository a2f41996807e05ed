package telemetry

import (
	"context"
	"slices"
	"testing"

	"google.golang.org/grpc/metadata"
)

func TestOutgoingHeaders(t *testing.T) {
	var h outgoingHeaders
	h.reset()
	h.Set("X-B3-TraceId", "a")
	h.Set("x-b3-traceid", "b")
	h.Set("traceparent", "c")
	if got := h.Get("X-B3-TRACEID"); got != "b" {
		t.Errorf("Get = %q, want the replaced value %q", got, "b")
	}
	if got, want := h.Keys(), []string{"x-b3-traceid", "traceparent"}; !slices.Equal(got, want) {
		t.Errorf("Keys = %q, want %q", got, want)
	}

	// No existing metadata: appended.
	ctx := h.attachOutgoing(context.Background(), callerMetadata{})
	md, _ := metadata.FromOutgoingContext(ctx)
	if got := md.Get("traceparent"); !slices.Equal(got, []string{"c"}) {
		t.Errorf("traceparent = %q, want [c]", got)
	}

	// Existing values under the same keys are replaced, others kept.
	ctx = metadata.NewOutgoingContext(context.Background(), metadata.Pairs("traceparent", "stale", "x-user", "u"))
	ctx = metadata.AppendToOutgoingContext(ctx, "x-b3-traceid", "stale-too")
	// The same whether attachOutgoing reads the context or is handed the
	// caller's metadata, as interceptors do.
	callerMD, _ := metadata.FromOutgoingContext(ctx)
	for _, caller := range []callerMetadata{{}, {md: callerMD, known: true}} {
		md, _ = metadata.FromOutgoingContext(h.attachOutgoing(ctx, caller))
		for key, want := range map[string][]string{"traceparent": {"c"}, "x-b3-traceid": {"b"}, "x-user": {"u"}} {
			if got := md.Get(key); !slices.Equal(got, want) {
				t.Errorf("known %v: %s = %q, want %q", caller.known, key, got, want)
			}
		}
	}

	var none outgoingHeaders
	none.reset()
	if ctx := context.Background(); none.attachOutgoing(ctx, callerMetadata{}) != ctx {
		t.Error("attaching no headers changed the context")
	}
}

func TestIncomingHeaders(t *testing.T) {
	ctx := metadata.NewIncomingContext(context.Background(), metadata.MD{"traceparent": {"p", "q"}, "Baggage": {"k=v"}})
	owner := newHandler(false, nil)
	rc := &rpcContext{Context: ctx, owner: owner}
	rc.state.incomingMD = owner.incoming.Metadata(ctx)
	h := (*incomingHeaders)(rc)
	if got := h.Get("traceparent"); got != "p" {
		t.Errorf("Get(traceparent) = %q, want the first value", got)
	}
	if got := h.Get("baggage"); got != "k=v" {
		t.Errorf("Get(baggage) = %q, want a case-insensitive match", got)
	}
	h.Set("traceparent", "x") // read-only: ignored
	if got := h.Get("traceparent"); got != "p" {
		t.Errorf("Set changed incoming metadata to %q", got)
	}
	if got, want := h.Keys(), []string{"baggage", "traceparent"}; !slices.Equal(got, want) {
		t.Errorf("Keys = %q, want %q", got, want)
	}
	if got, want := rc.state.headerBytes, int64(2*len("traceparent")+2*len("p")+len("baggage")+len("k=v")); got != want {
		t.Errorf("header bytes %d, want %d: each read counted", got, want)
	}
	empty := (*incomingHeaders)(&rpcContext{Context: context.Background(), owner: owner})
	if got := empty.Get("traceparent"); got != "" {
		t.Errorf("Get without metadata = %q, want empty", got)
	}
}
