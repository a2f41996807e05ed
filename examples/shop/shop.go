// Package shop is the example workloads' code, for you to copy: a Payments
// gRPC service written by hand over protobuf's well-known Struct type (so the
// examples need no code generator), its server, a client that tallies which
// version answered, and the Istio configuration of the example mesh.
package shop

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/structpb"

	"mesh"
)

// ServiceName is the Payments service's full gRPC name.
const ServiceName = "mesh.examples.Payments"

// ChargeMethod is the full method name of Payments.Charge.
const ChargeMethod = "/" + ServiceName + "/Charge"

// Payments is the server side of the Payments service.
type Payments struct {
	// Version is what the server reports in every reply ("v1", "v2").
	Version string
}

// Register adds p to a gRPC server.
func (p *Payments) Register(r grpc.ServiceRegistrar) {
	r.RegisterService(&grpc.ServiceDesc{
		ServiceName: ServiceName,
		HandlerType: (*any)(nil),
		Methods: []grpc.MethodDesc{{
			MethodName: "Charge",
			Handler: func(srv any, ctx context.Context, dec func(any) error, icpt grpc.UnaryServerInterceptor) (any, error) {
				req := new(structpb.Struct)
				if err := dec(req); err != nil {
					return nil, err
				}
				if icpt == nil {
					return p.charge(ctx, req)
				}
				info := &grpc.UnaryServerInfo{Server: srv, FullMethod: ChargeMethod}
				return icpt(ctx, req, info, func(ctx context.Context, req any) (any, error) {
					return p.charge(ctx, req.(*structpb.Struct))
				})
			},
		}},
	}, p)
}

// charge answers with the serving version, the caller's SPIFFE ID as the
// server saw it in the mTLS handshake, and the trace the call belongs to.
func (p *Payments) charge(ctx context.Context, _ *structpb.Struct) (*structpb.Struct, error) {
	caller := "(plaintext)"
	if id, ok := mesh.PeerID(ctx); ok {
		caller = id.String()
	}
	return structpb.NewStruct(map[string]any{
		"version":  p.Version,
		"caller":   caller,
		"trace_id": trace.SpanContextFromContext(ctx).TraceID().String(),
	})
}

// Reply is a decoded Charge reply.
type Reply struct {
	Version, Caller, TraceID string
}

// Charge calls Payments.Charge over conn.
func Charge(ctx context.Context, conn grpc.ClientConnInterface) (Reply, error) {
	out := new(structpb.Struct)
	if err := conn.Invoke(ctx, ChargeMethod, &structpb.Struct{}, out); err != nil {
		return Reply{}, err
	}
	f := out.GetFields()
	return Reply{
		Version: f["version"].GetStringValue(),
		Caller:  f["caller"].GetStringValue(),
		TraceID: f["trace_id"].GetStringValue(),
	}, nil
}

// Tally counts replies by version. It is safe for concurrent use.
type Tally struct {
	mu       sync.Mutex
	versions map[string]int
	failed   int
	last     Reply
}

// Add records one call's outcome.
func (t *Tally) Add(r Reply, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if err != nil {
		t.failed++
		return
	}
	if t.versions == nil {
		t.versions = map[string]int{}
	}
	t.versions[r.Version]++
	t.last = r
}

// Count returns how many replies came from version.
func (t *Tally) Count(version string) int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.versions[version]
}

// Failed returns how many calls failed.
func (t *Tally) Failed() int {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.failed
}

// Last returns the last successful reply.
func (t *Tally) Last() Reply {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.last
}

// String renders the split, e.g. "v1 9012 (90.1%)  v2 988 (9.9%)  failed 0".
func (t *Tally) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	total := t.failed
	names := make([]string, 0, len(t.versions))
	for v, n := range t.versions {
		names = append(names, v)
		total += n
	}
	sort.Strings(names)
	var b strings.Builder
	for _, v := range names {
		n := t.versions[v]
		fmt.Fprintf(&b, "%s %d (%.1f%%)  ", v, n, 100*float64(n)/float64(max(total, 1)))
	}
	fmt.Fprintf(&b, "failed %d", t.failed)
	return b.String()
}

// Run sends n calls over conn from `workers` goroutines and tallies them.
func Run(ctx context.Context, conn grpc.ClientConnInterface, n, workers int) *Tally {
	t := new(Tally)
	var wg sync.WaitGroup
	jobs := make(chan struct{})
	for range workers {
		wg.Go(func() {
			for range jobs {
				t.Add(Charge(ctx, conn))
			}
		})
	}
	for range n {
		jobs <- struct{}{}
	}
	close(jobs)
	wg.Wait()
	return t
}

// WaitFor calls Charge over conn until `streak` replies in a row satisfy ok:
// how a caller sees a control plane push arrive. It gives up when ctx ends.
func WaitFor(ctx context.Context, conn grpc.ClientConnInterface, streak int, ok func(Reply) bool) error {
	for run := 0; ; {
		reply, err := Charge(ctx, conn)
		switch {
		case err == nil && ok(reply):
			if run++; run >= streak {
				return nil
			}
		case ctx.Err() != nil:
			return fmt.Errorf("waiting for replies: %w (last error: %v)", ctx.Err(), err)
		default:
			run = 0
			select {
			case <-ctx.Done():
			case <-time.After(5 * time.Millisecond):
			}
		}
	}
}
