package transport_test

import (
	"context"
	"crypto/x509"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"mesh/identity"
	"mesh/internal/testutil"
	"mesh/transport"
	"mesh/xdsclient"
)

const otherID = "spiffe://example.org/ns/default/sa/intruder"

func principal(id string) xdsclient.RBACPrincipal {
	return xdsclient.RBACPrincipal{Kind: xdsclient.PrincipalAuthenticated, PrincipalName: &xdsclient.StringMatcher{Kind: xdsclient.MatchExact, Value: id}}
}

func anyPrincipal() xdsclient.RBACPrincipal {
	return xdsclient.RBACPrincipal{Kind: xdsclient.PrincipalAny}
}
func anyPermission() xdsclient.RBACPermission {
	return xdsclient.RBACPermission{Kind: xdsclient.PermissionAny}
}

func pathPermission(kind xdsclient.MatchKind, p string) xdsclient.RBACPermission {
	return xdsclient.RBACPermission{Kind: xdsclient.PermissionURLPath, URLPath: &xdsclient.StringMatcher{Kind: kind, Value: p}}
}

func headerPermission(name, value string) xdsclient.RBACPermission {
	return xdsclient.RBACPermission{Kind: xdsclient.PermissionHeader, Header: &xdsclient.HeaderMatcher{
		Name: name, Match: &xdsclient.StringMatcher{Kind: xdsclient.MatchExact, Value: value},
	}}
}

func rbacFilter(name string, action xdsclient.RBACAction, policies ...xdsclient.RBACPolicy) xdsclient.HTTPFilter {
	return xdsclient.HTTPFilter{
		Name:    name,
		TypeURL: "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC",
		Config:  &xdsclient.RBAC{Rules: &xdsclient.RBACRules{Action: action, Policies: policies}},
	}
}

func routerFilter() xdsclient.HTTPFilter {
	return xdsclient.HTTPFilter{Name: "envoy.filters.http.router", TypeURL: "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
}

func certWithURI(t *testing.T, id string) *x509.Certificate {
	t.Helper()
	u, err := url.Parse(id)
	if err != nil {
		t.Fatal(err)
	}
	return &x509.Certificate{URIs: []*url.URL{u}}
}

func TestEvaluateRBAC(t *testing.T) {
	allowCheckout := rbacFilter("envoy.filters.http.rbac", xdsclient.RBACAllow, xdsclient.RBACPolicy{
		Name:        "ns[default]-policy[allow-checkout]-rule[0]",
		Permissions: []xdsclient.RBACPermission{pathPermission(xdsclient.MatchPrefix, "/mesh.test.Whoami/")},
		Principals:  []xdsclient.RBACPrincipal{principal(clientID)},
	})
	denyRefund := rbacFilter("envoy.filters.http.rbac.DENY", xdsclient.RBACDeny, xdsclient.RBACPolicy{
		Name:        "ns[default]-policy[deny-refund]-rule[0]",
		Permissions: []xdsclient.RBACPermission{pathPermission(xdsclient.MatchExact, "/mesh.test.Whoami/Refund")},
		Principals:  []xdsclient.RBACPrincipal{anyPrincipal()},
	})
	audit := rbacFilter("envoy.filters.http.rbac.AUDIT", xdsclient.RBACLog, xdsclient.RBACPolicy{
		Name:        "ns[default]-policy[audit-all]-rule[0]",
		Permissions: []xdsclient.RBACPermission{anyPermission()},
		Principals:  []xdsclient.RBACPrincipal{anyPrincipal()},
	})
	chain := []xdsclient.HTTPFilter{audit, denyRefund, allowCheckout, routerFilter()}
	checkout := certWithURI(t, clientID)
	intruder := certWithURI(t, otherID)

	for _, tc := range []struct {
		name        string
		filters     []xdsclient.HTTPFilter
		req         transport.RBACRequest
		allowed     bool
		filter, pol string
	}{
		{"allowed principal", chain, transport.RBACRequest{PeerCertificate: checkout, Path: whoamiPath}, true, "", ""},
		{"other principal", chain, transport.RBACRequest{PeerCertificate: intruder, Path: whoamiPath}, false, "envoy.filters.http.rbac", ""},
		{"plaintext is not authenticated", chain, transport.RBACRequest{Path: whoamiPath}, false, "envoy.filters.http.rbac", ""},
		{"deny wins over allow", chain, transport.RBACRequest{PeerCertificate: checkout, Path: "/mesh.test.Whoami/Refund"},
			false, "envoy.filters.http.rbac.DENY", "ns[default]-policy[deny-refund]-rule[0]"},
		{"query is not part of url_path", chain, transport.RBACRequest{PeerCertificate: checkout, Path: "/mesh.test.Whoami/Refund?x=1"},
			false, "envoy.filters.http.rbac.DENY", "ns[default]-policy[deny-refund]-rule[0]"},
		{"no rbac filters", []xdsclient.HTTPFilter{routerFilter()}, transport.RBACRequest{Path: whoamiPath}, true, "", ""},
		{"filter without rules allows", []xdsclient.HTTPFilter{{Name: "r", Config: &xdsclient.RBAC{}}}, transport.RBACRequest{}, true, "", ""},
		{"allow filter without policies denies", []xdsclient.HTTPFilter{rbacFilter("allow-nothing", xdsclient.RBACAllow)},
			transport.RBACRequest{PeerCertificate: checkout}, false, "allow-nothing", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := transport.EvaluateRBAC(tc.filters, &tc.req)
			if d.Allowed != tc.allowed || d.Filter != tc.filter || d.Policy != tc.pol {
				t.Fatalf("decision = %+v, want allowed=%v filter=%q policy=%q", d, tc.allowed, tc.filter, tc.pol)
			}
		})
	}
	if d := transport.EvaluateRBAC(chain, &transport.RBACRequest{PeerCertificate: checkout, Path: whoamiPath}); len(d.Logged) != 1 ||
		d.Logged[0] != "envoy.filters.http.rbac.AUDIT/ns[default]-policy[audit-all]-rule[0]" {
		t.Errorf("logged = %q, want the audit policy", d.Logged)
	}
}

func TestEvaluateRBACMatchers(t *testing.T) {
	present := true
	headers := map[string][]string{"x-user": {"alice"}, "x-multi": {"a", "b"}, "x-num": {"42"}, "x-token-bin": {"zz"}}
	req := &transport.RBACRequest{
		PeerCertificate: &x509.Certificate{DNSNames: []string{"payments.example.org"}},
		Source:          netip.MustParseAddrPort("10.1.2.3:51000"),
		Destination:     netip.MustParseAddrPort("10.9.9.9:8080"),
		ServerName:      "payments",
		Method:          "POST",
		Path:            "/pkg.Svc/Get",
		Authority:       "payments:8080",
		Header:          func(n string) []string { return headers[n] },
	}
	perm := func(p xdsclient.RBACPermission) []xdsclient.HTTPFilter {
		return []xdsclient.HTTPFilter{rbacFilter("f", xdsclient.RBACAllow, xdsclient.RBACPolicy{Name: "p",
			Permissions: []xdsclient.RBACPermission{p}, Principals: []xdsclient.RBACPrincipal{anyPrincipal()}})}
	}
	prin := func(p xdsclient.RBACPrincipal) []xdsclient.HTTPFilter {
		return []xdsclient.HTTPFilter{rbacFilter("f", xdsclient.RBACAllow, xdsclient.RBACPolicy{Name: "p",
			Permissions: []xdsclient.RBACPermission{anyPermission()}, Principals: []xdsclient.RBACPrincipal{p}})}
	}
	exactM := func(v string) *xdsclient.StringMatcher {
		return &xdsclient.StringMatcher{Kind: xdsclient.MatchExact, Value: v}
	}
	not := func(p xdsclient.RBACPermission) xdsclient.RBACPermission {
		return xdsclient.RBACPermission{Kind: xdsclient.PermissionNot, Rule: &p}
	}
	for _, tc := range []struct {
		name    string
		filters []xdsclient.HTTPFilter
		want    bool
	}{
		{":method", perm(headerPermission(":method", "POST")), true},
		{":method mismatch", perm(headerPermission(":method", "GET")), false},
		{":path", perm(headerPermission(":path", "/pkg.Svc/Get")), true},
		{":authority", perm(headerPermission(":authority", "payments:8080")), true},
		{"header", perm(headerPermission("x-user", "alice")), true},
		{"multi-valued header joined", perm(headerPermission("x-multi", "a,b")), true},
		{"binary header never present", perm(xdsclient.RBACPermission{Kind: xdsclient.PermissionHeader,
			Header: &xdsclient.HeaderMatcher{Name: "x-token-bin", Present: &present}}), false},
		{"header range", perm(xdsclient.RBACPermission{Kind: xdsclient.PermissionHeader,
			Header: &xdsclient.HeaderMatcher{Name: "x-num", Range: &xdsclient.Int64Range{Start: 40, End: 43}}}), true},
		{"inverted header", perm(xdsclient.RBACPermission{Kind: xdsclient.PermissionHeader,
			Header: &xdsclient.HeaderMatcher{Name: "x-user", Match: exactM("bob"), Invert: true}}), true},
		{"destination port", perm(xdsclient.RBACPermission{Kind: xdsclient.PermissionDestinationPort, DestinationPort: 8080}), true},
		{"destination port mismatch", perm(xdsclient.RBACPermission{Kind: xdsclient.PermissionDestinationPort, DestinationPort: 9090}), false},
		{"destination port range", perm(xdsclient.RBACPermission{Kind: xdsclient.PermissionDestinationPortRange, PortRange: xdsclient.Int64Range{Start: 8000, End: 8081}}), true},
		{"destination ip", perm(xdsclient.RBACPermission{Kind: xdsclient.PermissionDestinationIP, DestinationIP: netip.MustParsePrefix("10.9.0.0/16")}), true},
		{"server name", perm(xdsclient.RBACPermission{Kind: xdsclient.PermissionRequestedServerName, ServerName: exactM("payments")}), true},
		{"and rules", perm(xdsclient.RBACPermission{Kind: xdsclient.PermissionAnd, Rules: []xdsclient.RBACPermission{
			headerPermission(":method", "POST"), pathPermission(xdsclient.MatchPrefix, "/pkg.Svc/")}}), true},
		{"and rules one fails", perm(xdsclient.RBACPermission{Kind: xdsclient.PermissionAnd, Rules: []xdsclient.RBACPermission{
			headerPermission(":method", "POST"), pathPermission(xdsclient.MatchPrefix, "/other.Svc/")}}), false},
		{"or rules", perm(xdsclient.RBACPermission{Kind: xdsclient.PermissionOr, Rules: []xdsclient.RBACPermission{
			headerPermission(":method", "GET"), pathPermission(xdsclient.MatchPrefix, "/pkg.Svc/")}}), true},
		{"not rule", perm(not(headerPermission(":method", "GET"))), true},
		{"dns san as principal name", prin(principal("payments.example.org")), true},
		{"authenticated without name", prin(xdsclient.RBACPrincipal{Kind: xdsclient.PrincipalAuthenticated}), true},
		{"source ip", prin(xdsclient.RBACPrincipal{Kind: xdsclient.PrincipalSourceIP, SourceIP: netip.MustParsePrefix("10.1.0.0/16")}), true},
		{"source ip mismatch", prin(xdsclient.RBACPrincipal{Kind: xdsclient.PrincipalSourceIP, SourceIP: netip.MustParsePrefix("192.168.0.0/16")}), false},
		{"principal header", prin(xdsclient.RBACPrincipal{Kind: xdsclient.PrincipalHeader, Header: &xdsclient.HeaderMatcher{Name: "x-user", Match: exactM("alice")}}), true},
		{"principal url_path", prin(xdsclient.RBACPrincipal{Kind: xdsclient.PrincipalURLPath, URLPath: exactM("/pkg.Svc/Get")}), true},
		{"and ids", prin(xdsclient.RBACPrincipal{Kind: xdsclient.PrincipalAnd, IDs: []xdsclient.RBACPrincipal{anyPrincipal(), principal("nobody")}}), false},
		{"or ids", prin(xdsclient.RBACPrincipal{Kind: xdsclient.PrincipalOr, IDs: []xdsclient.RBACPrincipal{principal("nobody"), anyPrincipal()}}), true},
		{"not id", prin(xdsclient.RBACPrincipal{Kind: xdsclient.PrincipalNot, ID: &xdsclient.RBACPrincipal{Kind: xdsclient.PrincipalAny}}), false},
	} {
		if got := transport.EvaluateRBAC(tc.filters, req).Allowed; got != tc.want {
			t.Errorf("%s: allowed = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// authzServer serves whoami over mTLS and plaintext (PERMISSIVE) with the
// given HTTP filters on both chains, enforced by an Authorizer.
func authzServer(t *testing.T, f fixture, filters []xdsclient.HTTPFilter, logger *slog.Logger) string {
	t.Helper()
	chains := permissiveChains()
	for i := range chains {
		chains[i].HTTP = &xdsclient.HTTPConnectionManager{HTTPFilters: filters}
	}
	authz := transport.NewAuthorizer(transport.WithLogger(logger))
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(
		grpc.Creds(transport.NewServerCredentials(f.server, byProtocol(chains), quiet)),
		grpc.UnaryInterceptor(authz.UnaryServerInterceptor()),
		grpc.StreamInterceptor(authz.StreamServerInterceptor()),
		grpc.UnknownServiceHandler(whoami))
	// A registered unary service, to exercise the unary interceptor.
	healthpb.RegisterHealthServer(srv, health.NewServer())
	testutil.Serve(t, srv, lis)
	return lis.Addr().String()
}

func TestAuthorizerOverGRPC(t *testing.T) {
	ctx := testutil.Context(t)
	f := newFixture(t)
	intruderProviders := transport.ProviderMap{"default": staticSource(t, f, otherID)}
	filters := []xdsclient.HTTPFilter{
		rbacFilter("envoy.filters.http.rbac.AUDIT", xdsclient.RBACLog, xdsclient.RBACPolicy{
			Name:        "ns[default]-policy[audit-deletes]-rule[0]",
			Permissions: []xdsclient.RBACPermission{headerPermission("x-op", "delete")},
			Principals:  []xdsclient.RBACPrincipal{anyPrincipal()},
		}),
		rbacFilter("envoy.filters.http.rbac.DENY", xdsclient.RBACDeny, xdsclient.RBACPolicy{
			Name:        "ns[default]-policy[deny-admin]-rule[0]",
			Permissions: []xdsclient.RBACPermission{pathPermission(xdsclient.MatchPrefix, "/mesh.test.Admin/")},
			Principals:  []xdsclient.RBACPrincipal{anyPrincipal()},
		}),
		rbacFilter("envoy.filters.http.rbac", xdsclient.RBACAllow, xdsclient.RBACPolicy{
			Name:        "ns[default]-policy[allow-checkout]-rule[0]",
			Permissions: []xdsclient.RBACPermission{anyPermission()},
			Principals:  []xdsclient.RBACPrincipal{principal(clientID)},
		}),
		routerFilter(),
	}
	logs := testutil.NewLogs(slog.LevelDebug)
	addr := authzServer(t, f, filters, slog.New(logs))

	checkout := dial(t, addr, mtlsInfo(exact(serverID)), transport.NewClientCredentials(f.client))
	if _, err := call(ctx, checkout); err != nil {
		t.Fatalf("authorized principal refused: %v", err)
	}

	intruder := dial(t, addr, mtlsInfo(exact(serverID)), transport.NewClientCredentials(intruderProviders))
	_, err := call(ctx, intruder)
	if status.Code(err) != codes.PermissionDenied {
		t.Fatalf("unauthorized principal: err = %v, want PermissionDenied", err)
	}
	if line := logs.Await(ctx, t, "rbac: request denied"); !strings.Contains(line, "filter=envoy.filters.http.rbac ") || !strings.Contains(line, otherID) {
		t.Errorf("denial log = %q", line)
	}

	// Unary RPCs of registered services go through the unary interceptor.
	if _, err := healthpb.NewHealthClient(checkout).Check(ctx, &healthpb.HealthCheckRequest{}); err != nil {
		t.Fatalf("authorized unary call: %v", err)
	}
	if _, err := healthpb.NewHealthClient(intruder).Check(ctx, &healthpb.HealthCheckRequest{}); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("unauthorized unary call: err = %v, want PermissionDenied", err)
	}
	if line := logs.Await(ctx, t, "rbac: request denied"); !strings.Contains(line, "path=/grpc.health.v1.Health/Check") {
		t.Errorf("unary denial log = %q", line)
	}

	plaintext := dial(t, addr, nil, transport.NewClientCredentials(f.client))
	if _, err := call(ctx, plaintext); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("plaintext caller: err = %v, want PermissionDenied", err)
	}
	logs.Await(ctx, t, "rbac: request denied")

	// DENY wins over ALLOW, on streams too.
	stream, err := checkout.NewStream(ctx, &grpc.StreamDesc{ClientStreams: true, ServerStreams: true}, "/mesh.test.Admin/Wipe")
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if err := stream.RecvMsg(new(struct{})); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("denied stream: err = %v, want PermissionDenied", err)
	}
	if line := logs.Await(ctx, t, "rbac: request denied"); !strings.Contains(line, "policy=ns[default]-policy[deny-admin]-rule[0]") {
		t.Errorf("denial log = %q, want the DENY policy named", line)
	}

	// AUDIT logs and lets the call through.
	mdCtx := metadata.AppendToOutgoingContext(ctx, "x-op", "delete")
	if _, err := call(mdCtx, checkout); err != nil {
		t.Fatalf("audited call refused: %v", err)
	}
	if line := logs.Await(ctx, t, "rbac: audit policy matched"); !strings.Contains(line, "audit-deletes") {
		t.Errorf("audit log = %q", line)
	}
}

func TestAuthorizerMiddleware(t *testing.T) {
	ctx := testutil.Context(t)
	filters := []xdsclient.HTTPFilter{
		rbacFilter("envoy.filters.http.rbac", xdsclient.RBACAllow, xdsclient.RBACPolicy{
			Name:        "allow-get-public",
			Permissions: []xdsclient.RBACPermission{{Kind: xdsclient.PermissionAnd, Rules: []xdsclient.RBACPermission{headerPermission(":method", "GET"), pathPermission(xdsclient.MatchPrefix, "/public/")}}},
			Principals:  []xdsclient.RBACPrincipal{anyPrincipal()},
		}),
		routerFilter(),
	}
	fc := &xdsclient.FilterChain{Name: "inbound-plaintext", HTTP: &xdsclient.HTTPConnectionManager{HTTPFilters: filters}}
	authz := transport.NewAuthorizer(quiet)
	handler := authz.Middleware(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") }))
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{
		Handler: handler,
		ConnContext: func(ctx context.Context, _ net.Conn) context.Context {
			return transport.ContextWithFilterChain(ctx, fc)
		},
	}
	testutil.ServeHTTP(t, srv, lis)

	client := &http.Client{Transport: &http.Transport{}}
	t.Cleanup(client.CloseIdleConnections)
	for _, tc := range []struct {
		method, path string
		want         int
	}{
		{http.MethodGet, "/public/info?x=1", http.StatusOK},
		{http.MethodPost, "/public/info", http.StatusForbidden},
		{http.MethodGet, "/private", http.StatusForbidden},
	} {
		req, err := http.NewRequestWithContext(ctx, tc.method, "http://"+lis.Addr().String()+tc.path, nil)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != tc.want {
			t.Errorf("%s %s: status %d, want %d", tc.method, tc.path, resp.StatusCode, tc.want)
		}
	}
}

func staticSource(t *testing.T, f fixture, id string) *identity.StaticSource {
	t.Helper()
	return identity.NewStaticSource(issue(t, f.ca, id), f.ca.Bundle())
}

// A policy change reaches RPCs on a connection that was accepted before it,
// through WithCurrentFilterChain.
func TestAuthorizerFollowsCurrentFilterChain(t *testing.T) {
	ctx := testutil.Context(t)
	f := newFixture(t)
	chains := permissiveChains()
	var current atomic.Pointer[xdsclient.FilterChain]
	current.Store(&chains[0]) // no RBAC filters: everything allowed
	authz := transport.NewAuthorizer(quiet, transport.WithCurrentFilterChain(
		func(_ context.Context, chosen *xdsclient.FilterChain) *xdsclient.FilterChain {
			if chosen.Name != "inbound-mtls" {
				t.Errorf("chosen chain = %q", chosen.Name)
			}
			return current.Load()
		}))
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(
		grpc.Creds(transport.NewServerCredentials(f.server, byProtocol(chains), quiet)),
		// whoami is an unknown-service handler: gRPC runs it as a stream.
		grpc.StreamInterceptor(authz.StreamServerInterceptor()),
		grpc.UnknownServiceHandler(whoami))
	testutil.Serve(t, srv, lis)

	conn := dial(t, lis.Addr().String(), mtlsInfo(), transport.NewClientCredentials(f.client))
	if _, err := call(ctx, conn); err != nil {
		t.Fatalf("before the policy: %v", err)
	}
	denyAll := chains[0]
	denyAll.HTTP = &xdsclient.HTTPConnectionManager{HTTPFilters: []xdsclient.HTTPFilter{
		rbacFilter("envoy.filters.http.rbac", xdsclient.RBACAllow), routerFilter(),
	}}
	current.Store(&denyAll)
	if _, err := call(ctx, conn); status.Code(err) != codes.PermissionDenied {
		t.Fatalf("after the policy: err = %v, want PermissionDenied", err)
	}
}

// A DENY filter before an ALLOW filter, as istiod emits them: the DENY
// policy wins even for a caller the ALLOW policy admits.
func TestEvaluateRBACDenyBeforeAllow(t *testing.T) {
	var out strings.Builder
	checkout, _ := url.Parse("spiffe://example.org/ns/default/sa/checkout")
	filters := []xdsclient.HTTPFilter{
		{Name: "envoy.filters.http.rbac.DENY", Config: &xdsclient.RBAC{Rules: &xdsclient.RBACRules{
			Action: xdsclient.RBACDeny,
			Policies: []xdsclient.RBACPolicy{{
				Name:        "ns[default]-policy[deny-refunds]-rule[0]",
				Permissions: []xdsclient.RBACPermission{{Kind: xdsclient.PermissionURLPath, URLPath: &xdsclient.StringMatcher{Kind: xdsclient.MatchExact, Value: "/payments.Payments/Refund"}}},
				Principals:  []xdsclient.RBACPrincipal{{Kind: xdsclient.PrincipalAny}},
			}},
		}}},
		{Name: "envoy.filters.http.rbac", Config: &xdsclient.RBAC{Rules: &xdsclient.RBACRules{
			Action: xdsclient.RBACAllow,
			Policies: []xdsclient.RBACPolicy{{
				Name:        "ns[default]-policy[allow-checkout]-rule[0]",
				Permissions: []xdsclient.RBACPermission{{Kind: xdsclient.PermissionAny}},
				Principals: []xdsclient.RBACPrincipal{{Kind: xdsclient.PrincipalAuthenticated,
					PrincipalName: &xdsclient.StringMatcher{Kind: xdsclient.MatchExact, Value: checkout.String()}}},
			}},
		}}},
	}
	peer := &x509.Certificate{URIs: []*url.URL{checkout}}
	for _, path := range []string{"/payments.Payments/Pay", "/payments.Payments/Refund"} {
		d := transport.EvaluateRBAC(filters, &transport.RBACRequest{PeerCertificate: peer, Method: "POST", Path: path})
		if d.Allowed {
			fmt.Fprintln(&out, path, "allowed")
		} else {
			fmt.Fprintln(&out, path, "denied by", d.Policy)
		}
	}
	if got, want := out.String(), `/payments.Payments/Pay allowed
/payments.Payments/Refund denied by ns[default]-policy[deny-refunds]-rule[0]
`; got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
}
