// Package incomingmd reads a gRPC server call's incoming metadata without
// copying it. grpc-go's only ways to read it, metadata.FromIncomingContext
// and metadata.ValueFromIncomingContext, copy what they return: an
// allocation per header read, on every call, for headers mesh reads on
// every call (traceparent, x-request-id, :authority).
//
// A Reader learns, once, the context key under which grpc-go keeps the
// incoming metadata, by asking metadata.ValueFromIncomingContext to look
// it up in a context that notes the keys it is asked for. It uses the key
// only after checking that it finds metadata grpc-go stored; otherwise it
// reads through grpc-go's API, copies and all.
//
//	r := incomingmd.NewReader()
//	v, ok := r.Get(ctx, "traceparent")
package incomingmd

import (
	"context"
	"reflect"
	"strings"

	"google.golang.org/grpc/metadata"
)

// Reader reads incoming metadata. The zero Reader works, through grpc-go's
// API.
type Reader struct {
	key any // grpc-go's key for incoming metadata; nil when not learned
}

// NewReader returns a Reader that reads without copying when the key could
// be learned and checked.
func NewReader() Reader {
	probe := &keyProbe{Context: context.Background()}
	metadata.ValueFromIncomingContext(probe, "k")
	if len(probe.keys) != 1 || !reflect.TypeOf(probe.keys[0]).Comparable() {
		return Reader{}
	}
	key := probe.keys[0]
	stored := metadata.NewIncomingContext(context.Background(), metadata.Pairs("k", "v"))
	md, ok := stored.Value(key).(metadata.MD)
	if !ok || len(md["k"]) != 1 || md["k"][0] != "v" {
		return Reader{}
	}
	return Reader{key: key}
}

// keyProbe is a context with no values that notes the keys it is asked
// for.
type keyProbe struct {
	context.Context
	keys []any
}

func (p *keyProbe) Value(key any) any {
	p.keys = append(p.keys, key)
	return nil
}

// Copies reports whether r reads through grpc-go's API, copying.
func (r Reader) Copies() bool { return r.key == nil }

// Values returns the values of key in ctx's incoming metadata, as
// metadata.ValueFromIncomingContext finds them (an exact match first, then
// one in any case), without copying: the caller must not change them.
func (r Reader) Values(ctx context.Context, key string) []string {
	if r.key == nil {
		return metadata.ValueFromIncomingContext(ctx, key)
	}
	md, _ := ctx.Value(r.key).(metadata.MD)
	return Values(md, key)
}

// Metadata returns ctx's incoming metadata, for reading several keys with
// one walk of the context: the map grpc-go stored, which the caller must
// not change, or, when r copies, metadata.FromIncomingContext's copy (keys
// in lower case). Read it with Values, which matches keys as grpc-go does.
func (r Reader) Metadata(ctx context.Context) metadata.MD {
	if r.key == nil {
		md, _ := metadata.FromIncomingContext(ctx)
		return md
	}
	md, _ := ctx.Value(r.key).(metadata.MD)
	return md
}

// Values returns the values of key in md: an exact match first, then one
// in any case, as metadata.ValueFromIncomingContext matches keys.
func Values(md metadata.MD, key string) []string {
	if v, ok := md[key]; ok {
		return v
	}
	for k, v := range md {
		if strings.EqualFold(k, key) {
			return v
		}
	}
	return nil
}

// KeyCase is what reading one metadata map has learned about the case of
// its keys, kept by the caller between reads of the same map (the zero
// KeyCase knows nothing). Metadata grpc-go's server transport stored has
// every key in lower case, as HTTP/2 requires; once that is known, a key
// that is not in the map needs no search for it in another case.
type KeyCase int8

const (
	caseUnknown KeyCase = iota
	caseLower           // every key is ASCII without upper case
	caseOther
)

// ValuesCased returns Values(md, key), learning into *c, on the first key
// md lacks, whether md's keys are all lower case: reading several keys of
// one call's metadata, most of them absent, then searches it once instead
// of once per absent key.
func ValuesCased(md metadata.MD, key string, c *KeyCase) []string {
	if v, ok := md[key]; ok {
		return v
	}
	if len(md) == 0 {
		return nil
	}
	if *c == caseUnknown {
		*c = caseOther
		if allLowerASCII(md) {
			*c = caseLower
		}
	}
	// An ASCII key without upper case equals in any case (strings.EqualFold)
	// only itself among such keys, which the lookup above did not find.
	if *c == caseLower && lowerASCII(key) {
		return nil
	}
	return Values(md, key)
}

func allLowerASCII(md metadata.MD) bool {
	for k := range md {
		if !lowerASCII(k) {
			return false
		}
	}
	return true
}

func lowerASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c >= 0x80 || ('A' <= c && c <= 'Z') {
			return false
		}
	}
	return true
}

// Get returns the first value of key in ctx's incoming metadata, and
// whether there was one.
func (r Reader) Get(ctx context.Context, key string) (string, bool) {
	if v := r.Values(ctx, key); len(v) > 0 {
		return v[0], true
	}
	return "", false
}
