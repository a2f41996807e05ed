package xdsclient

import (
	"fmt"
	"sort"

	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/structpb"

	corepb "mesh/xdsclient/internal/lite/envoy/config/core/v3"
	rbacconfigpb "mesh/xdsclient/internal/lite/envoy/config/rbac/v3"
	routepb "mesh/xdsclient/internal/lite/envoy/config/route/v3"
	rbacpb "mesh/xdsclient/internal/lite/envoy/extensions/filters/http/rbac/v3"
	matcherpb "mesh/xdsclient/internal/lite/envoy/type/matcher/v3"
	udpatypepb "mesh/xdsclient/internal/lite/udpa/type/v1"
	xdstypepb "mesh/xdsclient/internal/lite/xds/type/v3"
)

// maxRBACDepth bounds the nesting of and/or/not rules, so a hostile
// resource cannot make evaluation recurse without limit.
const maxRBACDepth = 64

// decodeRBACFilter decodes an RBAC HTTP filter's typed_config, given
// directly or wrapped in a TypedStruct, into mesh's RBAC (gRFC A41).
func decodeRBACFilter(a *anypb.Any, path string) (*RBAC, error) {
	pb := &rbacpb.RBAC{}
	switch a.GetTypeUrl() {
	case typeURLRBAC:
		if err := unmarshalAny(a, pb); err != nil {
			return nil, fmt.Errorf("%s: %w", path, err)
		}
	case typeURLTypedStruct:
		ts := &xdstypepb.TypedStruct{}
		if err := unmarshalAny(a, ts); err != nil {
			return nil, fmt.Errorf("%s: invalid TypedStruct: %w", path, err)
		}
		if err := unmarshalStruct(ts.GetValue(), pb); err != nil {
			return nil, fmt.Errorf("%s.value: %w", path, err)
		}
	case typeURLUDPATypedStrc:
		ts := &udpatypepb.TypedStruct{}
		if err := unmarshalAny(a, ts); err != nil {
			return nil, fmt.Errorf("%s: invalid TypedStruct: %w", path, err)
		}
		if err := unmarshalStruct(ts.GetValue(), pb); err != nil {
			return nil, fmt.Errorf("%s.value: %w", path, err)
		}
	default:
		return nil, fmt.Errorf("%s: want %s, got %q", path, typeURLRBAC, a.GetTypeUrl())
	}
	return rbacFilter(pb, path)
}

// unmarshalStruct decodes an RBAC filter config given as a TypedStruct's
// JSON object, as protojson reads one (istiod never sends it this way).
func unmarshalStruct(s *structpb.Struct, into *rbacpb.RBAC) error {
	return into.UnmarshalJSONStruct(s, 0)
}

func rbacFilter(pb *rbacpb.RBAC, path string) (*RBAC, error) {
	if pb.GetMatcher() != nil {
		return nil, fmt.Errorf("%s.matcher: unsupported; use rules", path)
	}
	// shadow_rules and shadow_matcher only feed Envoy's stats; gRFC A41
	// ignores them.
	out := &RBAC{}
	if pb.GetRules() == nil {
		return out, nil
	}
	rules, err := rbacRules(pb.GetRules(), path+".rules")
	if err != nil {
		return nil, err
	}
	out.Rules = rules
	return out, nil
}

func rbacRules(pb *rbacconfigpb.RBAC, path string) (*RBACRules, error) {
	out := &RBACRules{}
	switch pb.GetAction() {
	case rbacconfigpb.RBAC_ALLOW:
		out.Action = RBACAllow
	case rbacconfigpb.RBAC_DENY:
		out.Action = RBACDeny
	case rbacconfigpb.RBAC_LOG:
		out.Action = RBACLog
	default:
		return nil, fmt.Errorf("%s.action: unknown value %d", path, pb.GetAction())
	}
	if pb.GetAuditLoggingOptions() != nil {
		return nil, fmt.Errorf("%s.audit_logging_options: unsupported", path)
	}
	names := make([]string, 0, len(pb.GetPolicies()))
	for name := range pb.GetPolicies() {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		p, err := rbacPolicy(name, pb.GetPolicies()[name], fmt.Sprintf("%s.policies[%q]", path, name))
		if err != nil {
			return nil, err
		}
		out.Policies = append(out.Policies, p)
	}
	return out, nil
}

func rbacPolicy(name string, pb *rbacconfigpb.Policy, path string) (RBACPolicy, error) {
	out := RBACPolicy{Name: name}
	if pb == nil {
		return out, fmt.Errorf("%s: missing", path)
	}
	if pb.GetCondition() != nil || pb.GetCheckedCondition() != nil {
		return out, fmt.Errorf("%s.condition: CEL conditions are unsupported", path)
	}
	if len(pb.GetPermissions()) == 0 {
		return out, fmt.Errorf("%s.permissions: missing (use any: true to match every request)", path)
	}
	if len(pb.GetPrincipals()) == 0 {
		return out, fmt.Errorf("%s.principals: missing (use any: true to match every peer)", path)
	}
	for i, p := range pb.GetPermissions() {
		perm, err := rbacPermission(p, fmt.Sprintf("%s.permissions[%d]", path, i), 0)
		if err != nil {
			return out, err
		}
		out.Permissions = append(out.Permissions, perm)
	}
	for i, p := range pb.GetPrincipals() {
		prin, err := rbacPrincipal(p, fmt.Sprintf("%s.principals[%d]", path, i), 0)
		if err != nil {
			return out, err
		}
		out.Principals = append(out.Principals, prin)
	}
	return out, nil
}

// neverPermission is what unsupported-but-harmless permissions become
// (metadata, which a proxyless server has none of): gRFC A41 treats them
// as never matching.
func neverPermission() RBACPermission {
	return RBACPermission{Kind: PermissionNot, Rule: &RBACPermission{Kind: PermissionAny}}
}

func rbacPermission(pb *rbacconfigpb.Permission, path string, depth int) (RBACPermission, error) {
	if pb == nil {
		return RBACPermission{}, fmt.Errorf("%s: missing", path)
	}
	if depth > maxRBACDepth {
		return RBACPermission{}, fmt.Errorf("%s: rules nest deeper than %d levels", path, maxRBACDepth)
	}
	switch r := pb.GetRule().(type) {
	case *rbacconfigpb.Permission_Any:
		if !r.Any {
			return RBACPermission{}, fmt.Errorf("%s.any: must be true", path)
		}
		return RBACPermission{Kind: PermissionAny}, nil
	case *rbacconfigpb.Permission_AndRules, *rbacconfigpb.Permission_OrRules:
		kind, field, set := PermissionAnd, "and_rules", pb.GetAndRules()
		if _, ok := r.(*rbacconfigpb.Permission_OrRules); ok {
			kind, field, set = PermissionOr, "or_rules", pb.GetOrRules()
		}
		if len(set.GetRules()) == 0 {
			return RBACPermission{}, fmt.Errorf("%s.%s.rules: missing", path, field)
		}
		out := RBACPermission{Kind: kind}
		for i, sub := range set.GetRules() {
			p, err := rbacPermission(sub, fmt.Sprintf("%s.%s.rules[%d]", path, field, i), depth+1)
			if err != nil {
				return RBACPermission{}, err
			}
			out.Rules = append(out.Rules, p)
		}
		return out, nil
	case *rbacconfigpb.Permission_NotRule:
		p, err := rbacPermission(r.NotRule, path+".not_rule", depth+1)
		if err != nil {
			return RBACPermission{}, err
		}
		return RBACPermission{Kind: PermissionNot, Rule: &p}, nil
	case *rbacconfigpb.Permission_Header:
		h, err := rbacHeader(r.Header, path+".header")
		if err != nil {
			return RBACPermission{}, err
		}
		return RBACPermission{Kind: PermissionHeader, Header: h}, nil
	case *rbacconfigpb.Permission_UrlPath:
		m, err := pathMatcher(r.UrlPath, path+".url_path")
		if err != nil {
			return RBACPermission{}, err
		}
		return RBACPermission{Kind: PermissionURLPath, URLPath: m}, nil
	case *rbacconfigpb.Permission_DestinationIp:
		p, err := cidrRange(r.DestinationIp, path+".destination_ip")
		if err != nil {
			return RBACPermission{}, err
		}
		return RBACPermission{Kind: PermissionDestinationIP, DestinationIP: p}, nil
	case *rbacconfigpb.Permission_DestinationPort:
		if r.DestinationPort > 65535 {
			return RBACPermission{}, fmt.Errorf("%s.destination_port: %d is not a valid port", path, r.DestinationPort)
		}
		return RBACPermission{Kind: PermissionDestinationPort, DestinationPort: r.DestinationPort}, nil
	case *rbacconfigpb.Permission_DestinationPortRange:
		pr := r.DestinationPortRange
		if pr.GetStart() >= pr.GetEnd() {
			return RBACPermission{}, fmt.Errorf("%s.destination_port_range: start %d must be below end %d", path, pr.GetStart(), pr.GetEnd())
		}
		return RBACPermission{Kind: PermissionDestinationPortRange, PortRange: Int64Range{Start: int64(pr.GetStart()), End: int64(pr.GetEnd())}}, nil
	case *rbacconfigpb.Permission_RequestedServerName:
		m, err := stringMatcher(r.RequestedServerName, path+".requested_server_name")
		if err != nil {
			return RBACPermission{}, err
		}
		return RBACPermission{Kind: PermissionRequestedServerName, ServerName: &m}, nil
	case *rbacconfigpb.Permission_Metadata:
		return neverPermission(), nil
	case nil:
		return RBACPermission{}, fmt.Errorf("%s: no rule set", path)
	default:
		return RBACPermission{}, fmt.Errorf("%s: unsupported rule %T", path, r)
	}
}

func neverPrincipal() RBACPrincipal {
	return RBACPrincipal{Kind: PrincipalNot, ID: &RBACPrincipal{Kind: PrincipalAny}}
}

func rbacPrincipal(pb *rbacconfigpb.Principal, path string, depth int) (RBACPrincipal, error) {
	if pb == nil {
		return RBACPrincipal{}, fmt.Errorf("%s: missing", path)
	}
	if depth > maxRBACDepth {
		return RBACPrincipal{}, fmt.Errorf("%s: ids nest deeper than %d levels", path, maxRBACDepth)
	}
	switch id := pb.GetIdentifier().(type) {
	case *rbacconfigpb.Principal_Any:
		if !id.Any {
			return RBACPrincipal{}, fmt.Errorf("%s.any: must be true", path)
		}
		return RBACPrincipal{Kind: PrincipalAny}, nil
	case *rbacconfigpb.Principal_AndIds, *rbacconfigpb.Principal_OrIds:
		kind, field, set := PrincipalAnd, "and_ids", pb.GetAndIds()
		if _, ok := id.(*rbacconfigpb.Principal_OrIds); ok {
			kind, field, set = PrincipalOr, "or_ids", pb.GetOrIds()
		}
		if len(set.GetIds()) == 0 {
			return RBACPrincipal{}, fmt.Errorf("%s.%s.ids: missing", path, field)
		}
		out := RBACPrincipal{Kind: kind}
		for i, sub := range set.GetIds() {
			p, err := rbacPrincipal(sub, fmt.Sprintf("%s.%s.ids[%d]", path, field, i), depth+1)
			if err != nil {
				return RBACPrincipal{}, err
			}
			out.IDs = append(out.IDs, p)
		}
		return out, nil
	case *rbacconfigpb.Principal_NotId:
		p, err := rbacPrincipal(id.NotId, path+".not_id", depth+1)
		if err != nil {
			return RBACPrincipal{}, err
		}
		return RBACPrincipal{Kind: PrincipalNot, ID: &p}, nil
	case *rbacconfigpb.Principal_Authenticated_:
		out := RBACPrincipal{Kind: PrincipalAuthenticated}
		if pn := id.Authenticated.GetPrincipalName(); pn != nil {
			m, err := stringMatcher(pn, path+".authenticated.principal_name")
			if err != nil {
				return RBACPrincipal{}, err
			}
			out.PrincipalName = &m
		}
		return out, nil
	case *rbacconfigpb.Principal_SourceIp:
		return sourceIPPrincipal(id.SourceIp, path+".source_ip")
	case *rbacconfigpb.Principal_DirectRemoteIp:
		return sourceIPPrincipal(id.DirectRemoteIp, path+".direct_remote_ip")
	case *rbacconfigpb.Principal_RemoteIp:
		return sourceIPPrincipal(id.RemoteIp, path+".remote_ip")
	case *rbacconfigpb.Principal_Header:
		h, err := rbacHeader(id.Header, path+".header")
		if err != nil {
			return RBACPrincipal{}, err
		}
		return RBACPrincipal{Kind: PrincipalHeader, Header: h}, nil
	case *rbacconfigpb.Principal_UrlPath:
		m, err := pathMatcher(id.UrlPath, path+".url_path")
		if err != nil {
			return RBACPrincipal{}, err
		}
		return RBACPrincipal{Kind: PrincipalURLPath, URLPath: m}, nil
	case *rbacconfigpb.Principal_Metadata:
		return neverPrincipal(), nil
	case nil:
		return RBACPrincipal{}, fmt.Errorf("%s: no identifier set", path)
	default:
		return RBACPrincipal{}, fmt.Errorf("%s: unsupported identifier %T", path, id)
	}
}

func sourceIPPrincipal(c *corepb.CidrRange, path string) (RBACPrincipal, error) {
	if c == nil {
		return RBACPrincipal{}, fmt.Errorf("%s: missing", path)
	}
	p, err := cidrRange(c, path)
	if err != nil {
		return RBACPrincipal{}, err
	}
	return RBACPrincipal{Kind: PrincipalSourceIP, SourceIP: p}, nil
}

func rbacHeader(h *routepb.HeaderMatcher, path string) (*HeaderMatcher, error) {
	if h == nil {
		return nil, fmt.Errorf("%s: missing", path)
	}
	m, err := headerMatcher(h, path)
	if err != nil {
		return nil, err
	}
	return &m, nil
}

func pathMatcher(pm *matcherpb.PathMatcher, path string) (*StringMatcher, error) {
	if pm == nil {
		return nil, fmt.Errorf("%s: missing", path)
	}
	m, err := stringMatcher(pm.GetPath(), path+".path")
	if err != nil {
		return nil, err
	}
	return &m, nil
}
