package telemetry_test

import (
	"context"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

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

// TestPeerAuthIdentityNamesThePeer: both interceptors learn the peer's
// principal from the connection's AuthInfo, in preference to
// WithPeerIdentity's function.
func TestPeerAuthIdentityNamesThePeer(t *testing.T) {
	mp, reader := newMeter(t)
	const principal = "spiffe://cluster.local/ns/shop/sa/peer"
	fromAuth := telemetry.WithPeerAuthIdentity(func(ai credentials.AuthInfo) (string, bool) {
		if ai == nil || ai.AuthType() != "insecure" {
			return "", false // not the connection's
		}
		return principal, true
	})
	fromContext := telemetry.WithPeerIdentity(func(context.Context) (string, bool) { return "spiffe://wrong/ns/a/sa/b", true })
	client := telemetry.NewClientInterceptor(telemetry.WithMeterProvider(mp), telemetry.WithWorkload(checkout), fromContext, fromAuth)
	server := telemetry.NewServerInterceptor(telemetry.WithMeterProvider(mp), telemetry.WithWorkload(payments), fromAuth, fromContext)
	hc := startHealth(t, client.DialOptions(), append(server.ServerOptions(), grpc.Creds(insecure.NewCredentials())))
	if _, err := hc.Check(context.Background(), &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatal(err)
	}
	points := requestCounts(t, collect(t, reader))
	if len(points) != 2 {
		t.Fatalf("%d request count series, want one per reporter", len(points))
	}
	for _, p := range points {
		l := labelMap(p.Attributes)
		// Istio's source reporter says "unknown" for the policy.
		peerLabel, policy := "destination_principal", "unknown"
		if l["reporter"] == "destination" {
			peerLabel, policy = "source_principal", "mutual_tls"
		}
		if l[peerLabel] != principal || l["connection_security_policy"] != policy {
			t.Errorf("reporter %s: %s %q, connection_security_policy %q; want %q, %s",
				l["reporter"], peerLabel, l[peerLabel], l["connection_security_policy"], principal, policy)
		}
	}
}
