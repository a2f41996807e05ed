package incomingmd_test

import (
	"context"
	"slices"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/types/known/emptypb"

	"mesh/internal/incomingmd"
	"mesh/internal/leakcheck"
	"mesh/internal/testutil"
)

func TestMain(m *testing.M) { leakcheck.Main(m) }

// TestReaderLearnsTheKey fails when grpc-go stops keeping incoming
// metadata where a Reader can learn to find it: every server call would
// then copy each header it reads again.
func TestReaderLearnsTheKey(t *testing.T) {
	if incomingmd.NewReader().Copies() {
		t.Fatal("the Reader could not learn grpc-go's incoming metadata key; it reads by copying")
	}
	if !(incomingmd.Reader{}).Copies() {
		t.Fatal("the zero Reader claims to read without copying")
	}
}

// TestReaderFindsWhatGRPCGoFinds compares every read with
// metadata.ValueFromIncomingContext's, for the zero Reader and a learned one.
func TestReaderFindsWhatGRPCGoFinds(t *testing.T) {
	contexts := map[string]context.Context{
		"none":     context.Background(),
		"empty":    metadata.NewIncomingContext(context.Background(), metadata.MD{}),
		"lower":    metadata.NewIncomingContext(context.Background(), metadata.Pairs("traceparent", "p", "traceparent", "q", "x-request-id", "r")),
		"mixed":    metadata.NewIncomingContext(context.Background(), metadata.MD{"Baggage": {"k=v"}, "x-Request-ID": {"s"}}),
		"no value": metadata.NewIncomingContext(context.Background(), metadata.MD{"traceparent": {}, "TraceParent": {"t"}}),
		"outgoing": metadata.NewOutgoingContext(context.Background(), metadata.Pairs("traceparent", "o")),
	}
	keys := []string{"traceparent", "x-request-id", "baggage", "Baggage", "X-REQUEST-ID", "absent", ""}
	for _, r := range []incomingmd.Reader{{}, incomingmd.NewReader()} {
		for name, ctx := range contexts {
			for _, key := range keys {
				want := metadata.ValueFromIncomingContext(ctx, key)
				if got := r.Values(ctx, key); !slices.Equal(got, want) {
					t.Errorf("copies %v, %s: Values(%q) = %q, want %q", r.Copies(), name, key, got, want)
				}
				// A copy of the metadata has its keys in lower case, as
				// metadata.FromIncomingContext makes them; keys that differ
				// only in case then collide, and which one wins depends on
				// map order, so those are left out.
				wantFromMetadata := want
				if r.Copies() {
					md, _ := metadata.FromIncomingContext(ctx)
					wantFromMetadata = md.Get(key)
				}
				if !r.Copies() || !keysCollide(ctx) {
					if got := incomingmd.Values(r.Metadata(ctx), key); !slices.Equal(got, wantFromMetadata) {
						t.Errorf("copies %v, %s: Values(Metadata, %q) = %q, want %q", r.Copies(), name, key, got, wantFromMetadata)
					}
				}
				v, ok := r.Get(ctx, key)
				if wantOK := len(want) > 0; ok != wantOK || (ok && v != want[0]) {
					t.Errorf("copies %v, %s: Get(%q) = %q, %v; want %q", r.Copies(), name, key, v, ok, want)
				}
			}
		}
	}
}

// TestValuesCasedFindsWhatGRPCGoFinds reads the keys of each map in turn
// with one KeyCase per map, as a call's reader does, and compares every read
// with metadata.ValueFromIncomingContext's: the memo must never hide a key
// grpc-go would find in another case, Unicode folding included.
func TestValuesCasedFindsWhatGRPCGoFinds(t *testing.T) {
	maps := map[string]metadata.MD{
		"nil":     nil,
		"lower":   metadata.Pairs("traceparent", "p", "x-request-id", "r", ":authority", "a"),
		"mixed":   {"Baggage": {"k=v"}, "x-Request-ID": {"s"}, "traceparent": {"p"}},
		"kelvin":  {"\u212aey": {"kelvin"}, "traceparent": {"p"}}, // "\u212a" folds to "k"
		"long s":  {"ba\u017fe": {"long s"}},                      // "\u017f" folds to "s"
		"upper":   {"TRACESTATE": {"t"}},
		"no keys": {},
	}
	orders := [][]string{
		{"absent", "traceparent", "baggage", "key", "base", "tracestate", "x-request-id"},
		{"tracestate", "x-request-id", "Baggage", "KEY", "absent", "BASE"},
		{"key", "base", "baggage", ""},
	}
	for name, md := range maps {
		ctx := metadata.NewIncomingContext(context.Background(), md)
		for _, keys := range orders {
			var c incomingmd.KeyCase
			for _, key := range keys {
				want := metadata.ValueFromIncomingContext(ctx, key)
				if got := incomingmd.ValuesCased(md, key, &c); !slices.Equal(got, want) {
					t.Errorf("%s, reading %q in turn: ValuesCased(%q) = %q, want %q", name, keys, key, got, want)
				}
			}
		}
	}
}

// keysCollide reports whether ctx's incoming metadata has two keys that
// differ only in case.
func keysCollide(ctx context.Context) bool {
	stored := incomingmd.NewReader().Metadata(ctx) // the map as stored
	lower, _ := metadata.FromIncomingContext(ctx)
	return len(stored) != len(lower)
}

// TestReaderReadsAGRPCServerCallWithoutAllocating reads the headers of a
// real call, in its method, as grpc-go's server stored them.
func TestReaderReadsAGRPCServerCallWithoutAllocating(t *testing.T) {
	r := incomingmd.NewReader()
	type result struct {
		got, want [][]string
		allocs    float64
	}
	results := make(chan result, 1)
	keys := []string{":authority", "traceparent", "x-request-id", "user-agent", "content-type", "absent"}
	srv := grpc.NewServer()
	srv.RegisterService(&grpc.ServiceDesc{
		ServiceName: "test.Echo",
		HandlerType: (*any)(nil),
		Methods: []grpc.MethodDesc{{MethodName: "Echo", Handler: func(_ any, ctx context.Context, dec func(any) error, _ grpc.UnaryServerInterceptor) (any, error) {
			var res result
			for _, k := range keys {
				res.got = append(res.got, r.Values(ctx, k))
				res.want = append(res.want, metadata.ValueFromIncomingContext(ctx, k))
			}
			res.allocs = testing.AllocsPerRun(100, func() {
				for _, k := range keys {
					r.Get(ctx, k)
				}
				md := r.Metadata(ctx)
				for _, k := range keys {
					incomingmd.Values(md, k)
				}
			})
			results <- res
			in := new(emptypb.Empty)
			return in, dec(in)
		}}},
	}, struct{}{})
	addr := testutil.Start(t, srv)
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx := metadata.AppendToOutgoingContext(testutil.Context(t), "traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00", "X-Request-ID", "id-1")
	if err := conn.Invoke(ctx, "/test.Echo/Echo", new(emptypb.Empty), new(emptypb.Empty)); err != nil {
		t.Fatal(err)
	}
	res := <-results
	for i, k := range keys {
		if !slices.Equal(res.got[i], res.want[i]) {
			t.Errorf("%s = %q, grpc-go reads %q", k, res.got[i], res.want[i])
		}
	}
	if len(res.got[1]) != 1 || len(res.got[2]) != 1 {
		t.Errorf("the call's own headers were not read: traceparent %q, x-request-id %q", res.got[1], res.got[2])
	}
	if res.allocs != 0 {
		t.Errorf("reading %d headers allocated %v times", len(keys), res.allocs)
	}
}
