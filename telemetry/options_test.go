package telemetry_test

import (
	"context"
	"testing"

	"mesh/telemetry"
)

// TestPeerIdentityIsGRPCOnly: the HTTP constructors read the connection's
// TLS state, so WithPeerIdentity must not be an Option they would accept
// and ignore; every Option still configures the gRPC constructors.
func TestPeerIdentityIsGRPCOnly(t *testing.T) {
	peer := telemetry.WithPeerIdentity(func(context.Context) (string, bool) { return "", false })
	if _, ok := peer.(telemetry.Option); ok {
		t.Error("WithPeerIdentity is an Option: Middleware and Transport would take it and ignore it")
	}
	var grpcOpt telemetry.GRPCOption = telemetry.WithService("payments") // compiles: every Option is a GRPCOption
	_ = telemetry.NewClientInterceptor(grpcOpt, peer)
}
