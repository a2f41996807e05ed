package xdsclient

import (
	"slices"
	"strings"
	"testing"
	"time"

	routepb "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	matcherpb "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/grpc/codes"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

func TestDecodeRetryPolicy(t *testing.T) {
	dc := testDecodeContext()
	withPolicy := clusterRoute("a")
	withPolicy.GetRoute().RetryPolicy = &routepb.RetryPolicy{
		// istiod mixes Envoy-only tokens in; they are skipped, not fatal.
		RetryOn:              "unavailable, refused-stream,5xx,cancelled,retriable-status-codes,retriable-4xx,unavailable",
		RetriableStatusCodes: []uint32{409},
		NumRetries:           wrapperspb.UInt32(3),
		RetryBackOff:         &routepb.RetryPolicy_RetryBackOff{BaseInterval: durationpb.New(10 * time.Millisecond)},
	}
	inherits := clusterRoute("b")
	rc := routeConfig(withPolicy, inherits)
	rc.VirtualHosts[0].RetryPolicy = &routepb.RetryPolicy{RetryOn: "gateway-error,connect-failure,reset"}
	_, got, err := dc.decodeRouteConfig(mustAny(t, rc))
	if err != nil {
		t.Fatal(err)
	}
	p := got.VirtualHosts[0].Routes[0].Action.RetryPolicy
	if p == nil {
		t.Fatal("route retry policy not decoded")
	}
	if !slices.Equal(p.GRPCCodes, []codes.Code{codes.Canceled, codes.Unavailable}) {
		t.Errorf("grpc codes = %v", p.GRPCCodes)
	}
	if !p.HTTP5xx || p.HTTPGatewayError || !slices.Equal(p.HTTPStatusCodes, []uint32{409}) {
		t.Errorf("http conditions = %+v", p)
	}
	if p.NumRetries != 3 || p.BackoffBase != 10*time.Millisecond || p.BackoffMax != 100*time.Millisecond {
		t.Errorf("retries/backoff = %d %v %v", p.NumRetries, p.BackoffBase, p.BackoffMax)
	}
	if !p.RetriesHTTPStatus(409) || !p.RetriesHTTPStatus(502) || p.RetriesHTTPStatus(404) || !p.RetriesGRPC(codes.Unavailable) || p.RetriesGRPC(codes.Internal) {
		t.Errorf("predicates wrong for %+v", p)
	}
	if len(dc.ignored) != 1 || !strings.Contains(dc.ignored[0], "routes[0].route.retry_policy.retry_on: unsupported conditions retriable-4xx") || !p.RefusedStream {
		t.Errorf("ignored = %q, want one entry naming the skipped tokens", dc.ignored)
	}

	vp := got.VirtualHosts[0].Routes[1].Action.RetryPolicy
	if vp == nil || !vp.HTTPGatewayError || !vp.HTTPConnectFailure || !vp.HTTPReset || vp.HTTP5xx {
		t.Fatalf("virtual host policy not inherited: %+v", vp)
	}
	if vp.NumRetries != 1 || vp.BackoffBase != 25*time.Millisecond || vp.BackoffMax != 250*time.Millisecond {
		t.Errorf("defaults = %d %v %v", vp.NumRetries, vp.BackoffBase, vp.BackoffMax)
	}
}

func TestDecodeRetryPolicyErrorsNameTheField(t *testing.T) {
	for name, tc := range map[string]struct {
		policy *routepb.RetryPolicy
		want   string
	}{
		"zero retries": {&routepb.RetryPolicy{RetryOn: "5xx", NumRetries: wrapperspb.UInt32(0)}, "retry_policy.num_retries: must be positive"},
		"zero base": {&routepb.RetryPolicy{RetryOn: "5xx", RetryBackOff: &routepb.RetryPolicy_RetryBackOff{BaseInterval: durationpb.New(0)}},
			"retry_back_off.base_interval: must be positive"},
		"max below base": {&routepb.RetryPolicy{RetryOn: "5xx", RetryBackOff: &routepb.RetryPolicy_RetryBackOff{BaseInterval: durationpb.New(time.Second), MaxInterval: durationpb.New(time.Millisecond)}},
			"retry_back_off.max_interval"},
		"bad status": {&routepb.RetryPolicy{RetryOn: "retriable-status-codes", RetriableStatusCodes: []uint32{42}}, "retriable_status_codes[0]: 42"},
	} {
		t.Run(name, func(t *testing.T) {
			r := clusterRoute("a")
			r.GetRoute().RetryPolicy = tc.policy
			_, _, err := testDecodeContext().decodeRouteConfig(mustAny(t, routeConfig(r)))
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), `route_config "foo"`) {
				t.Fatalf("err = %v, want it to name %q", err, tc.want)
			}
		})
	}
}

func TestDecodeQueryParameters(t *testing.T) {
	r := clusterRoute("a")
	r.Match.QueryParameters = []*routepb.QueryParameterMatcher{
		{Name: "debug", QueryParameterMatchSpecifier: &routepb.QueryParameterMatcher_PresentMatch{PresentMatch: true}},
		{Name: "v", QueryParameterMatchSpecifier: &routepb.QueryParameterMatcher_StringMatch{StringMatch: &matcherpb.StringMatcher{MatchPattern: &matcherpb.StringMatcher_Exact{Exact: "2"}}}},
	}
	_, rc, err := testDecodeContext().decodeRouteConfig(mustAny(t, routeConfig(r)))
	if err != nil {
		t.Fatal(err)
	}
	q := rc.VirtualHosts[0].Routes[0].Match.QueryParameters
	if len(q) != 2 || q[0].Name != "debug" || !q[0].Present || q[1].Match == nil || !q[1].Match.Match("2") {
		t.Fatalf("query parameters = %+v", q)
	}

	r.Match.QueryParameters = []*routepb.QueryParameterMatcher{{Name: "x"}}
	_, _, err = testDecodeContext().decodeRouteConfig(mustAny(t, routeConfig(r)))
	if err == nil || !strings.Contains(err.Error(), "match.query_parameters[0]: query_parameter_match_specifier: missing") {
		t.Fatalf("err = %v", err)
	}
}

func TestDecodeHashPolicies(t *testing.T) {
	r := clusterRoute("a")
	r.GetRoute().HashPolicy = []*routepb.RouteAction_HashPolicy{
		{PolicySpecifier: &routepb.RouteAction_HashPolicy_Header_{Header: &routepb.RouteAction_HashPolicy_Header{HeaderName: "X-User"}}},
		{PolicySpecifier: &routepb.RouteAction_HashPolicy_Cookie_{Cookie: &routepb.RouteAction_HashPolicy_Cookie{Name: "c"}}},
		{PolicySpecifier: &routepb.RouteAction_HashPolicy_FilterState_{FilterState: &routepb.RouteAction_HashPolicy_FilterState{Key: "io.grpc.channel_id"}}, Terminal: true},
		{PolicySpecifier: &routepb.RouteAction_HashPolicy_QueryParameter_{QueryParameter: &routepb.RouteAction_HashPolicy_QueryParameter{Name: "user"}}},
	}
	dc := testDecodeContext()
	_, rc, err := dc.decodeRouteConfig(mustAny(t, routeConfig(r)))
	if err != nil {
		t.Fatal(err)
	}
	if len(dc.ignored) != 1 || !strings.Contains(dc.ignored[0], "hash_policy[1]") {
		t.Errorf("ignored = %q, want the cookie policy", dc.ignored)
	}
	want := []HashPolicy{{Kind: HashHeader, Name: "x-user"}, {Kind: HashChannelID, Terminal: true}, {Kind: HashQueryParameter, Name: "user"}}
	if got := rc.VirtualHosts[0].Routes[0].Action.HashPolicies; !slices.Equal(got, want) {
		t.Fatalf("hash policies = %+v, want %+v (cookie skipped)", got, want)
	}
	r.GetRoute().HashPolicy = []*routepb.RouteAction_HashPolicy{{PolicySpecifier: &routepb.RouteAction_HashPolicy_Header_{Header: &routepb.RouteAction_HashPolicy_Header{}}}}
	_, _, err = testDecodeContext().decodeRouteConfig(mustAny(t, routeConfig(r)))
	if err == nil || !strings.Contains(err.Error(), "route.hash_policy[0].header.header_name: missing") {
		t.Fatalf("err = %v", err)
	}
}
