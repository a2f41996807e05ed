package xdsclient

import (
	"strings"
	"testing"

	xdstypepb "github.com/cncf/xds/go/xds/type/v3"
	corepb "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	listenerpb "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	rbacconfigpb "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	routepb "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	rbacpb "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	routerpb "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/router/v3"
	hcmpb "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	matcherpb "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	typepb "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	celpb "google.golang.org/genproto/googleapis/api/expr/v1alpha1"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

func rbacExact(s string) *matcherpb.StringMatcher {
	return &matcherpb.StringMatcher{MatchPattern: &matcherpb.StringMatcher_Exact{Exact: s}}
}

// istiodRBAC is shaped like istiod's grpcgen output for an ALLOW policy:
// principals from source.principals and namespaces, permissions from
// paths and methods.
func istiodRBAC(action rbacconfigpb.RBAC_Action) *rbacpb.RBAC {
	return &rbacpb.RBAC{Rules: &rbacconfigpb.RBAC{
		Action: action,
		Policies: map[string]*rbacconfigpb.Policy{
			"ns[default]-policy[b]-rule[0]": {
				Permissions: []*rbacconfigpb.Permission{{Rule: &rbacconfigpb.Permission_Any{Any: true}}},
				Principals:  []*rbacconfigpb.Principal{{Identifier: &rbacconfigpb.Principal_Any{Any: true}}},
			},
			"ns[default]-policy[a]-rule[0]": {
				Permissions: []*rbacconfigpb.Permission{{Rule: &rbacconfigpb.Permission_AndRules{AndRules: &rbacconfigpb.Permission_Set{Rules: []*rbacconfigpb.Permission{
					{Rule: &rbacconfigpb.Permission_UrlPath{UrlPath: &matcherpb.PathMatcher{Rule: &matcherpb.PathMatcher_Path{Path: &matcherpb.StringMatcher{MatchPattern: &matcherpb.StringMatcher_Prefix{Prefix: "/pkg.Svc/"}}}}}},
					{Rule: &rbacconfigpb.Permission_Header{Header: &routepb.HeaderMatcher{Name: ":method", HeaderMatchSpecifier: &routepb.HeaderMatcher_StringMatch{StringMatch: rbacExact("POST")}}}},
					{Rule: &rbacconfigpb.Permission_DestinationPort{DestinationPort: 8080}},
					{Rule: &rbacconfigpb.Permission_DestinationPortRange{DestinationPortRange: &typepb.Int32Range{Start: 8000, End: 9000}}},
					{Rule: &rbacconfigpb.Permission_DestinationIp{DestinationIp: &corepb.CidrRange{AddressPrefix: "10.0.0.0", PrefixLen: wrapperspb.UInt32(8)}}},
					{Rule: &rbacconfigpb.Permission_NotRule{NotRule: &rbacconfigpb.Permission{Rule: &rbacconfigpb.Permission_RequestedServerName{RequestedServerName: rbacExact("evil")}}}},
				}}}}},
				Principals: []*rbacconfigpb.Principal{{Identifier: &rbacconfigpb.Principal_OrIds{OrIds: &rbacconfigpb.Principal_Set{Ids: []*rbacconfigpb.Principal{
					{Identifier: &rbacconfigpb.Principal_Authenticated_{Authenticated: &rbacconfigpb.Principal_Authenticated{PrincipalName: rbacExact("spiffe://cluster.local/ns/default/sa/checkout")}}},
					{Identifier: &rbacconfigpb.Principal_Authenticated_{Authenticated: &rbacconfigpb.Principal_Authenticated{
						PrincipalName: &matcherpb.StringMatcher{MatchPattern: &matcherpb.StringMatcher_SafeRegex{SafeRegex: &matcherpb.RegexMatcher{Regex: ".*/ns/shop/.*"}}}}}},
					{Identifier: &rbacconfigpb.Principal_NotId{NotId: &rbacconfigpb.Principal{Identifier: &rbacconfigpb.Principal_DirectRemoteIp{DirectRemoteIp: &corepb.CidrRange{AddressPrefix: "192.168.0.1"}}}}},
					{Identifier: &rbacconfigpb.Principal_AndIds{AndIds: &rbacconfigpb.Principal_Set{Ids: []*rbacconfigpb.Principal{
						{Identifier: &rbacconfigpb.Principal_Header{Header: &routepb.HeaderMatcher{Name: "x-user", HeaderMatchSpecifier: &routepb.HeaderMatcher_PresentMatch{PresentMatch: true}}}},
						{Identifier: &rbacconfigpb.Principal_UrlPath{UrlPath: &matcherpb.PathMatcher{Rule: &matcherpb.PathMatcher_Path{Path: rbacExact("/pkg.Svc/Get")}}}},
						{Identifier: &rbacconfigpb.Principal_SourceIp{SourceIp: &corepb.CidrRange{AddressPrefix: "10.1.0.0", PrefixLen: wrapperspb.UInt32(16)}}},
						{Identifier: &rbacconfigpb.Principal_RemoteIp{RemoteIp: &corepb.CidrRange{AddressPrefix: "::1"}}},
					}}}},
				}}}}},
			},
		},
	}}
}

func rbacListener(t *testing.T, filters ...*hcmpb.HttpFilter) *listenerpb.Listener {
	hcm := &hcmpb.HttpConnectionManager{
		RouteSpecifier: &hcmpb.HttpConnectionManager_RouteConfig{RouteConfig: &routepb.RouteConfiguration{
			Name: "inbound",
			VirtualHosts: []*routepb.VirtualHost{{Name: "inbound", Domains: []string{"*"}, Routes: []*routepb.Route{{
				Match:  &routepb.RouteMatch{PathSpecifier: &routepb.RouteMatch_Prefix{Prefix: "/"}},
				Action: &routepb.Route_NonForwardingAction{NonForwardingAction: &routepb.NonForwardingAction{}},
			}}}},
		}},
		HttpFilters: append(filters, &hcmpb.HttpFilter{Name: "envoy.filters.http.router", ConfigType: &hcmpb.HttpFilter_TypedConfig{TypedConfig: mustAny(t, &routerpb.Router{})}}),
	}
	return &listenerpb.Listener{
		Name: "xds.istio.io/grpc/lds/inbound/127.0.0.1:8080",
		Address: &corepb.Address{Address: &corepb.Address_SocketAddress{SocketAddress: &corepb.SocketAddress{
			Address: "127.0.0.1", PortSpecifier: &corepb.SocketAddress_PortValue{PortValue: 8080}}}},
		FilterChains: []*listenerpb.FilterChain{{
			Name:    "inbound-plaintext",
			Filters: []*listenerpb.Filter{{Name: "hcm", ConfigType: &listenerpb.Filter_TypedConfig{TypedConfig: mustAny(t, hcm)}}},
		}},
	}
}

func rbacHTTPFilter(t *testing.T, name string, cfg *rbacpb.RBAC) *hcmpb.HttpFilter {
	return &hcmpb.HttpFilter{Name: name, ConfigType: &hcmpb.HttpFilter_TypedConfig{TypedConfig: mustAny(t, cfg)}}
}

func TestDecodeRBACFiltersOnInboundListener(t *testing.T) {
	l := rbacListener(t,
		rbacHTTPFilter(t, "envoy.filters.http.rbac.DENY", istiodRBAC(rbacconfigpb.RBAC_DENY)),
		rbacHTTPFilter(t, "envoy.filters.http.rbac", istiodRBAC(rbacconfigpb.RBAC_ALLOW)),
		rbacHTTPFilter(t, "no-rules", &rbacpb.RBAC{}))
	_, got, err := (&decodeContext{}).decodeListener(mustAny(t, l))
	if err != nil {
		t.Fatal(err)
	}
	filters := got.FilterChains[0].HTTP.HTTPFilters
	if len(filters) != 4 {
		t.Fatalf("filters = %+v", filters)
	}
	deny, ok := filters[0].Config.(*RBAC)
	if !ok || deny.Rules == nil || deny.Rules.Action != RBACDeny || filters[0].Name != "envoy.filters.http.rbac.DENY" {
		t.Fatalf("first filter = %+v", filters[0])
	}
	if allow := filters[1].Config.(*RBAC); allow.Rules.Action != RBACAllow {
		t.Errorf("second filter action = %v", allow.Rules.Action)
	}
	if noRules := filters[2].Config.(*RBAC); noRules.Rules != nil {
		t.Errorf("filter without rules decoded as %+v", noRules.Rules)
	}
	if filters[3].Config != nil {
		t.Errorf("router config = %v", filters[3].Config)
	}

	pols := deny.Rules.Policies
	if len(pols) != 2 || pols[0].Name != "ns[default]-policy[a]-rule[0]" || pols[1].Name != "ns[default]-policy[b]-rule[0]" {
		t.Fatalf("policies not sorted by name: %+v", pols)
	}
	and := pols[0].Permissions[0]
	if and.Kind != PermissionAnd || len(and.Rules) != 6 {
		t.Fatalf("permission = %+v", and)
	}
	if r := and.Rules[0]; r.Kind != PermissionURLPath || r.URLPath.Kind != MatchPrefix || r.URLPath.Value != "/pkg.Svc/" {
		t.Errorf("url_path = %+v", r)
	}
	if r := and.Rules[1]; r.Kind != PermissionHeader || r.Header.Name != ":method" || r.Header.Match.Value != "POST" {
		t.Errorf("header = %+v", r)
	}
	if r := and.Rules[2]; r.Kind != PermissionDestinationPort || r.DestinationPort != 8080 {
		t.Errorf("destination_port = %+v", r)
	}
	if r := and.Rules[3]; r.Kind != PermissionDestinationPortRange || r.PortRange != (Int64Range{8000, 9000}) {
		t.Errorf("destination_port_range = %+v", r)
	}
	if r := and.Rules[4]; r.Kind != PermissionDestinationIP || r.DestinationIP.String() != "10.0.0.0/8" {
		t.Errorf("destination_ip = %+v", r)
	}
	if r := and.Rules[5]; r.Kind != PermissionNot || r.Rule.Kind != PermissionRequestedServerName || r.Rule.ServerName.Value != "evil" {
		t.Errorf("not_rule = %+v", r)
	}
	or := pols[0].Principals[0]
	if or.Kind != PrincipalOr || len(or.IDs) != 4 {
		t.Fatalf("principal = %+v", or)
	}
	if p := or.IDs[0]; p.Kind != PrincipalAuthenticated || p.PrincipalName.Value != "spiffe://cluster.local/ns/default/sa/checkout" {
		t.Errorf("authenticated = %+v", p)
	}
	if p := or.IDs[1]; p.PrincipalName.Kind != MatchRegex || !p.PrincipalName.Match("spiffe://td/ns/shop/sa/x") || p.PrincipalName.Match("spiffe://td/ns/other/sa/x") {
		t.Errorf("namespace regex = %+v", p)
	}
	if p := or.IDs[2]; p.Kind != PrincipalNot || p.ID.Kind != PrincipalSourceIP || p.ID.SourceIP.String() != "192.168.0.1/32" {
		t.Errorf("not_id = %+v", p)
	}
	and2 := or.IDs[3]
	if and2.Kind != PrincipalAnd || and2.IDs[0].Kind != PrincipalHeader || and2.IDs[1].Kind != PrincipalURLPath ||
		and2.IDs[2].SourceIP.String() != "10.1.0.0/16" || and2.IDs[3].SourceIP.String() != "::1/128" {
		t.Errorf("and_ids = %+v", and2)
	}
}

func TestDecodeRBACFromTypedStruct(t *testing.T) {
	js, err := protojson.Marshal(istiodRBAC(rbacconfigpb.RBAC_LOG))
	if err != nil {
		t.Fatal(err)
	}
	st := &structpb.Struct{}
	if err := st.UnmarshalJSON(js); err != nil {
		t.Fatal(err)
	}
	ts := &xdstypepb.TypedStruct{TypeUrl: typeURLRBAC, Value: st}
	got, err := decodeRBACFilter(mustAny(t, ts), "http_filters[0].typed_config")
	if err != nil {
		t.Fatal(err)
	}
	if got.Rules.Action != RBACLog || len(got.Rules.Policies) != 2 {
		t.Fatalf("decoded = %+v", got.Rules)
	}
}

func TestDecodeRBACMetadataNeverMatches(t *testing.T) {
	cfg := &rbacpb.RBAC{Rules: &rbacconfigpb.RBAC{Policies: map[string]*rbacconfigpb.Policy{"p": {
		Permissions: []*rbacconfigpb.Permission{{Rule: &rbacconfigpb.Permission_Metadata{Metadata: &matcherpb.MetadataMatcher{}}}},
		Principals:  []*rbacconfigpb.Principal{{Identifier: &rbacconfigpb.Principal_Metadata{Metadata: &matcherpb.MetadataMatcher{}}}},
	}}}}
	got, err := decodeRBACFilter(mustAny(t, cfg), "f")
	if err != nil {
		t.Fatal(err)
	}
	p := got.Rules.Policies[0]
	if p.Permissions[0].Kind != PermissionNot || p.Permissions[0].Rule.Kind != PermissionAny ||
		p.Principals[0].Kind != PrincipalNot || p.Principals[0].ID.Kind != PrincipalAny {
		t.Errorf("metadata matchers = %+v", p)
	}
}

func TestDecodeRBACErrorsNameTheField(t *testing.T) {
	policy := func(perm *rbacconfigpb.Permission, prin *rbacconfigpb.Principal) *rbacpb.RBAC {
		p := &rbacconfigpb.Policy{}
		if perm != nil {
			p.Permissions = []*rbacconfigpb.Permission{perm}
		}
		if prin != nil {
			p.Principals = []*rbacconfigpb.Principal{prin}
		}
		return &rbacpb.RBAC{Rules: &rbacconfigpb.RBAC{Policies: map[string]*rbacconfigpb.Policy{"pol": p}}}
	}
	anyPerm := &rbacconfigpb.Permission{Rule: &rbacconfigpb.Permission_Any{Any: true}}
	anyPrin := &rbacconfigpb.Principal{Identifier: &rbacconfigpb.Principal_Any{Any: true}}
	deep := anyPerm
	for range maxRBACDepth + 2 {
		deep = &rbacconfigpb.Permission{Rule: &rbacconfigpb.Permission_NotRule{NotRule: deep}}
	}
	withCondition := policy(anyPerm, anyPrin)
	withCondition.Rules.Policies["pol"].Condition = &celpb.Expr{}
	for _, tc := range []struct {
		name string
		cfg  *rbacpb.RBAC
		want string
	}{
		{"no permissions", policy(nil, anyPrin), `rules.policies["pol"].permissions: missing`},
		{"no principals", policy(anyPerm, nil), `rules.policies["pol"].principals: missing`},
		{"empty permission", policy(&rbacconfigpb.Permission{}, anyPrin), `rules.policies["pol"].permissions[0]: no rule set`},
		{"any false", policy(&rbacconfigpb.Permission{Rule: &rbacconfigpb.Permission_Any{}}, anyPrin), `permissions[0].any: must be true`},
		{"bad regex", policy(anyPerm, &rbacconfigpb.Principal{Identifier: &rbacconfigpb.Principal_Authenticated_{Authenticated: &rbacconfigpb.Principal_Authenticated{
			PrincipalName: &matcherpb.StringMatcher{MatchPattern: &matcherpb.StringMatcher_SafeRegex{SafeRegex: &matcherpb.RegexMatcher{Regex: "("}}}}}}),
			`principals[0].authenticated.principal_name.safe_regex.regex`},
		{"bad cidr", policy(anyPerm, &rbacconfigpb.Principal{Identifier: &rbacconfigpb.Principal_SourceIp{SourceIp: &corepb.CidrRange{AddressPrefix: "nope"}}}),
			`principals[0].source_ip.address_prefix: "nope" is not an IP address`},
		{"empty and_rules", policy(&rbacconfigpb.Permission{Rule: &rbacconfigpb.Permission_AndRules{AndRules: &rbacconfigpb.Permission_Set{}}}, anyPrin),
			`permissions[0].and_rules.rules: missing`},
		{"header without name", policy(&rbacconfigpb.Permission{Rule: &rbacconfigpb.Permission_Header{Header: &routepb.HeaderMatcher{}}}, anyPrin),
			`permissions[0].header.name: missing`},
		{"bad port", policy(&rbacconfigpb.Permission{Rule: &rbacconfigpb.Permission_DestinationPort{DestinationPort: 70000}}, anyPrin),
			`permissions[0].destination_port: 70000 is not a valid port`},
		{"too deep", policy(deep, anyPrin), "nest deeper than"},
		{"condition", withCondition, `rules.policies["pol"].condition: CEL conditions are unsupported`},
		{"unknown action", &rbacpb.RBAC{Rules: &rbacconfigpb.RBAC{Action: 7}}, "rules.action: unknown value 7"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			l := rbacListener(t, rbacHTTPFilter(t, "envoy.filters.http.rbac", tc.cfg))
			_, _, err := (&decodeContext{}).decodeListener(mustAny(t, l))
			if err == nil {
				t.Fatal("decoded without error")
			}
			const where = `listener "xds.istio.io/grpc/lds/inbound/127.0.0.1:8080": filter_chains[0].filters[0].typed_config.http_filters[0].typed_config.`
			if !strings.Contains(err.Error(), where) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error = %q\nwant it to contain %q and %q", err, where, tc.want)
			}
		})
	}
}

// FuzzDecodeRBAC feeds arbitrary RBAC filter configs to the decoder: it
// must never panic, and whatever it accepts must be well formed (every
// tree node of a kind that needs children has them).
func FuzzDecodeRBAC(f *testing.F) {
	for _, action := range []rbacconfigpb.RBAC_Action{rbacconfigpb.RBAC_ALLOW, rbacconfigpb.RBAC_DENY, rbacconfigpb.RBAC_LOG} {
		b, err := proto.Marshal(istiodRBAC(action))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		pb := &rbacpb.RBAC{}
		if proto.Unmarshal(data, pb) != nil {
			return
		}
		a, err := anypb.New(pb)
		if err != nil {
			return
		}
		got, err := decodeRBACFilter(a, "f")
		if err != nil {
			if !strings.HasPrefix(err.Error(), "f") {
				t.Fatalf("error %q does not start with the field path", err)
			}
			return
		}
		if got.Rules == nil {
			return
		}
		for _, p := range got.Rules.Policies {
			if len(p.Permissions) == 0 || len(p.Principals) == 0 {
				t.Fatalf("policy %q accepted without permissions or principals", p.Name)
			}
			for i := range p.Permissions {
				checkPermission(t, &p.Permissions[i])
			}
			for i := range p.Principals {
				checkPrincipal(t, &p.Principals[i])
			}
		}
	})
}

func checkPermission(t *testing.T, p *RBACPermission) {
	switch p.Kind {
	case PermissionAnd, PermissionOr:
		if len(p.Rules) == 0 {
			t.Fatalf("%v permission without rules", p.Kind)
		}
		for i := range p.Rules {
			checkPermission(t, &p.Rules[i])
		}
	case PermissionNot:
		if p.Rule == nil {
			t.Fatal("not_rule without a rule")
		}
		checkPermission(t, p.Rule)
	case PermissionHeader:
		if p.Header == nil {
			t.Fatal("header permission without a matcher")
		}
	case PermissionURLPath:
		if p.URLPath == nil {
			t.Fatal("url_path permission without a matcher")
		}
	case PermissionRequestedServerName:
		if p.ServerName == nil {
			t.Fatal("requested_server_name permission without a matcher")
		}
	}
}

func checkPrincipal(t *testing.T, p *RBACPrincipal) {
	switch p.Kind {
	case PrincipalAnd, PrincipalOr:
		if len(p.IDs) == 0 {
			t.Fatalf("%v principal without ids", p.Kind)
		}
		for i := range p.IDs {
			checkPrincipal(t, &p.IDs[i])
		}
	case PrincipalNot:
		if p.ID == nil {
			t.Fatal("not_id without an id")
		}
		checkPrincipal(t, p.ID)
	case PrincipalHeader:
		if p.Header == nil {
			t.Fatal("header principal without a matcher")
		}
	case PrincipalURLPath:
		if p.URLPath == nil {
			t.Fatal("url_path principal without a matcher")
		}
	}
}
