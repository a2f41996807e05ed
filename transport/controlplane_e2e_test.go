package transport_test

import (
	"errors"
	"net"
	"testing"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"mesh/controlplane"
	"mesh/identity"
	"mesh/internal/testutil"
	"mesh/transport"
	"mesh/xdsclient"
)

// meshSource issues an SVID for namespace/sa from the control plane's CA.
func meshSource(t *testing.T, cp *controlplane.Server, sa string) *identity.StaticSource {
	t.Helper()
	chain, key, err := cp.IssueSVID("default", sa)
	if err != nil {
		t.Fatal(err)
	}
	svid, err := x509svid.Parse(chain, key)
	if err != nil {
		t.Fatal(err)
	}
	bundle, err := x509bundle.Parse(spiffeid.RequireTrustDomainFromString("cluster.local"), cp.RootPEM())
	if err != nil {
		t.Fatal(err)
	}
	return identity.NewStaticSource(svid, bundle)
}

// TestControlPlanePolicyEndToEnd runs the whole path: istio YAML applied to
// the embedded control plane, the inbound listener fetched over ADS and
// decoded by xdsclient, and its PERMISSIVE chains and RBAC filters enforced
// on real gRPC over loopback.
func TestControlPlanePolicyEndToEnd(t *testing.T) {
	ctx := testutil.Context(t)
	site := newInboundSite(ctx, t, `
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-checkout, namespace: default}
spec:
  selector: {matchLabels: {app: payments}}
  rules:
  - from: [{source: {principals: ["cluster.local/ns/default/sa/checkout"]}}]
    to: [{operation: {paths: ["/mesh.test.Whoami/*"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-refund, namespace: default}
spec:
  action: DENY
  rules:
  - to: [{operation: {paths: ["/mesh.test.Whoami/Refund"]}}]
`)
	cp, lis, xc := site.cp, site.lis, site.xds
	got := make(chan *xdsclient.Listener, 1)
	cancel := xc.WatchListener(site.name, func(ev xdsclient.Event[*xdsclient.Listener]) {
		if ev.Err == nil && !ev.NotFound {
			select {
			case got <- ev.Resource:
			default:
			}
		}
	})
	t.Cleanup(cancel)
	var inbound *xdsclient.Listener
	select {
	case inbound = <-got:
	case <-ctx.Done():
		t.Fatal("inbound listener never arrived")
	}
	if len(inbound.FilterChains) != 2 {
		t.Fatalf("PERMISSIVE inbound listener has %d chains, want 2", len(inbound.FilterChains))
	}

	chooser := func(_ net.Conn, protocol string) (*xdsclient.FilterChain, error) {
		for i := range inbound.FilterChains {
			if fc := &inbound.FilterChains[i]; fc.Match.TransportProtocol == protocol {
				return fc, nil
			}
		}
		return nil, errors.New("no chain for " + protocol)
	}
	authz := transport.NewAuthorizer(quiet)
	srv := grpc.NewServer(append(authz.ServerOptions(),
		grpc.Creds(transport.NewServerCredentials(transport.ProviderMap{"default": meshSource(t, cp, "payments")}, chooser, quiet)),
		grpc.UnknownServiceHandler(whoami))...)
	testutil.Serve(t, srv, lis)

	addr := lis.Addr().String()
	info := site.upstream()
	checkout := dial(t, addr, info, transport.NewClientCredentials(transport.ProviderMap{"default": meshSource(t, cp, "checkout")}))
	intruder := dial(t, addr, info, transport.NewClientCredentials(transport.ProviderMap{"default": meshSource(t, cp, "intruder")}))
	plaintext := dial(t, addr, nil, transport.NewClientCredentials(nil))

	if _, err := call(ctx, checkout); err != nil {
		t.Fatalf("checkout (allowed): %v", err)
	}
	if err := checkout.Invoke(ctx, "/mesh.test.Whoami/Refund", &emptypb.Empty{}, &wrapperspb.StringValue{}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("checkout calling Refund (denied): err = %v, want PermissionDenied", err)
	}
	if _, err := call(ctx, intruder); status.Code(err) != codes.PermissionDenied {
		t.Errorf("intruder: err = %v, want PermissionDenied", err)
	}
	// The plaintext client gets past the handshake (PERMISSIVE) and is then
	// refused by RBAC: it has no authenticated principal.
	if _, err := call(ctx, plaintext); status.Code(err) != codes.PermissionDenied {
		t.Errorf("plaintext client: err = %v, want PermissionDenied", err)
	}
}
