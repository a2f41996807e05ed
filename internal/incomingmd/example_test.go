package incomingmd_test

import (
	"context"
	"fmt"

	"google.golang.org/grpc/metadata"

	"mesh/internal/incomingmd"
)

// A server reads the headers it needs from a call's context, as a method
// or an interceptor gets it from grpc-go.
func ExampleReader() {
	ctx := metadata.NewIncomingContext(context.Background(), metadata.Pairs("x-request-id", "7d3c"))
	r := incomingmd.NewReader()
	id, ok := r.Get(ctx, "x-request-id")
	fmt.Println(id, ok, r.Copies())
	_, ok = r.Get(ctx, "traceparent")
	fmt.Println(ok)
	// Output:
	// 7d3c true false
	// false
}
