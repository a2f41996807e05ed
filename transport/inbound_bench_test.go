package transport

import (
	"context"
	"net"
	"testing"

	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"

	"mesh/xdsclient"
)

// fixedListener hands every watch one listener resource.
type fixedListener struct{ l *xdsclient.Listener }

func (f fixedListener) WatchListener(_ string, fn func(xdsclient.Event[*xdsclient.Listener])) func() {
	fn(xdsclient.Event[*xdsclient.Listener]{Resource: f.l})
	return func() {}
}

// BenchmarkGRPCInboundAuthorize is the server's per-call cost: the
// connection's current filter chain looked up, then its RBAC filters
// evaluated. "changed" is a call on a connection accepted under an
// earlier version of the listener resource, whose chain is chosen again.
func BenchmarkGRPCInboundAuthorize(b *testing.B) {
	allowAll := xdsclient.HTTPFilter{Name: "envoy.filters.http.rbac", Config: &xdsclient.RBAC{Rules: &xdsclient.RBACRules{
		Action:   xdsclient.RBACAllow,
		Policies: []xdsclient.RBACPolicy{{Name: "any", Permissions: []xdsclient.RBACPermission{{Kind: xdsclient.PermissionAny}}, Principals: []xdsclient.RBACPrincipal{{Kind: xdsclient.PrincipalAny}}}},
	}}}
	resource := func() *xdsclient.Listener {
		chains := permissive()
		for i := range chains {
			chains[i].HTTP = &xdsclient.HTTPConnectionManager{HTTPFilters: []xdsclient.HTTPFilter{allowAll}}
		}
		return &xdsclient.Listener{Name: "inbound", FilterChains: chains}
	}
	first := resource()
	for _, bc := range []struct {
		name    string
		current *xdsclient.Listener
	}{{"unchanged", first}, {"changed", resource()}} {
		b.Run(bc.name, func(b *testing.B) {
			lis, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				b.Fatal(err)
			}
			s := NewGRPCInbound(fixedListener{bc.current}, nil)
			sl := s.Listen(lis, "inbound")
			defer sl.Close()
			ctx := peer.NewContext(context.Background(), &peer.Peer{
				Addr:      &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 40000},
				LocalAddr: lis.Addr(),
				AuthInfo:  AuthInfo{FilterChain: &first.FilterChains[1]}, // plaintext
			})
			ctx = metadata.NewIncomingContext(ctx, metadata.Pairs(":authority", "payments:8080"))
			b.ReportAllocs()
			for b.Loop() {
				if err := s.authz.authorizeRPC(ctx, "/payments.Payments/Pay"); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
