package controlplane

import (
	"fmt"
	"net/netip"
	"regexp"
	"strconv"
	"strings"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	rbacconfig "github.com/envoyproxy/go-control-plane/envoy/config/rbac/v3"
	route "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	rbacfilter "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/rbac/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	matcher "github.com/envoyproxy/go-control-plane/envoy/type/matcher/v3"
	"google.golang.org/protobuf/types/known/wrapperspb"
	security "istio.io/api/security/v1beta1"
)

// KindAuthorizationPolicy is istio's security.istio.io AuthorizationPolicy,
// turned into RBAC HTTP filters on inbound listeners (gRFC A41), as
// istiod's proxyless generator does.
const KindAuthorizationPolicy = "AuthorizationPolicy"

// RBAC filter names istiod uses; the AUDIT one is ours (istiod emits no
// audit filter for proxyless workloads).
const (
	rbacFilterName      = "envoy.filters.http.rbac"
	rbacDenyFilterName  = "envoy.filters.http.rbac.DENY"
	rbacAuditFilterName = "envoy.filters.http.rbac.AUDIT"
)

// rbacFilters returns the RBAC filters for a workload, in evaluation order:
// AUDIT (log only), then DENY, then ALLOW. A workload with no policies gets
// none. An ALLOW policy without rules still yields an ALLOW filter, which
// then matches nothing: istio's "allow nothing".
func (g *generation) rbacFilters(n *nodeInfo) []*hcm.HttpFilter {
	byAction := map[security.AuthorizationPolicy_Action]*rbacconfig.RBAC{}
	for _, o := range g.cfg.sorted(KindAuthorizationPolicy) {
		ap := o.spec.(*security.AuthorizationPolicy)
		if !policyApplies(o.key.namespace, ap, n) {
			continue
		}
		rules := byAction[ap.GetAction()]
		if rules == nil {
			rules = &rbacconfig.RBAC{Action: rbacAction(ap.GetAction()), Policies: map[string]*rbacconfig.Policy{}}
			byAction[ap.GetAction()] = rules
		}
		for i, r := range ap.GetRules() {
			// Validated on apply; a rule that still fails is left out rather
			// than widened.
			p, err := rbacPolicy(o.key.namespace, r, "")
			if err != nil {
				continue
			}
			rules.Policies[fmt.Sprintf("ns[%s]-policy[%s]-rule[%d]", o.key.namespace, o.key.name, i)] = p
		}
	}
	var out []*hcm.HttpFilter
	for _, step := range []struct {
		action security.AuthorizationPolicy_Action
		name   string
	}{
		{security.AuthorizationPolicy_AUDIT, rbacAuditFilterName},
		{security.AuthorizationPolicy_DENY, rbacDenyFilterName},
		{security.AuthorizationPolicy_ALLOW, rbacFilterName},
	} {
		if rules := byAction[step.action]; rules != nil {
			out = append(out, httpFilter(step.name, &rbacfilter.RBAC{Rules: rules}))
		}
	}
	return out
}

// policyApplies follows istio's scoping: a policy in the root namespace
// without a selector covers the mesh, one in the workload's namespace
// covers it when its selector (if any) matches the workload's labels.
func policyApplies(ns string, ap *security.AuthorizationPolicy, n *nodeInfo) bool {
	sel := ap.GetSelector().GetMatchLabels()
	switch {
	case ns == n.namespace:
		return labelsMatch(sel, n.labels)
	case ns == rootNamespace:
		return len(sel) == 0 || labelsMatch(sel, n.labels)
	}
	return false
}

func rbacAction(a security.AuthorizationPolicy_Action) rbacconfig.RBAC_Action {
	switch a {
	case security.AuthorizationPolicy_DENY:
		return rbacconfig.RBAC_DENY
	case security.AuthorizationPolicy_AUDIT:
		return rbacconfig.RBAC_LOG
	}
	return rbacconfig.RBAC_ALLOW
}

// validateAuthorizationPolicy rejects what cannot be enforced by a
// proxyless server, naming the field.
func validateAuthorizationPolicy(ns string, ap *security.AuthorizationPolicy) error {
	switch ap.GetAction() {
	case security.AuthorizationPolicy_ALLOW, security.AuthorizationPolicy_DENY, security.AuthorizationPolicy_AUDIT:
	default:
		return fmt.Errorf("spec.action: %s is not supported (want ALLOW, DENY or AUDIT)", ap.GetAction())
	}
	if ap.GetProvider() != nil {
		return fmt.Errorf("spec.provider: not supported (CUSTOM authorization)")
	}
	if ap.GetTargetRef() != nil || len(ap.GetTargetRefs()) > 0 {
		return fmt.Errorf("spec.targetRefs: not supported; use spec.selector")
	}
	for i, r := range ap.GetRules() {
		if _, err := rbacPolicy(ns, r, fmt.Sprintf("spec.rules[%d]", i)); err != nil {
			return err
		}
	}
	return nil
}

// rbacPolicy turns one rule into an Envoy policy: any of its sources (each
// an AND of its fields) and any of its operations (likewise), with every
// condition ANDed to the side it concerns.
func rbacPolicy(ns string, r *security.Rule, path string) (*rbacconfig.Policy, error) {
	var principalConds []*rbacconfig.Principal
	var permissionConds []*rbacconfig.Permission
	for i, c := range r.GetWhen() {
		prin, perm, err := condition(ns, c, fmt.Sprintf("%s.when[%d]", path, i))
		if err != nil {
			return nil, err
		}
		if prin != nil {
			principalConds = append(principalConds, prin)
		}
		if perm != nil {
			permissionConds = append(permissionConds, perm)
		}
	}
	p := &rbacconfig.Policy{}
	for i, f := range r.GetFrom() {
		ids, err := sourceIDs(ns, f.GetSource(), fmt.Sprintf("%s.from[%d].source", path, i))
		if err != nil {
			return nil, err
		}
		p.Principals = append(p.Principals, andIDs(append(ids, principalConds...)))
	}
	if len(p.Principals) == 0 {
		p.Principals = []*rbacconfig.Principal{andIDs(principalConds)}
	}
	for i, t := range r.GetTo() {
		rules, err := operationRules(t.GetOperation(), fmt.Sprintf("%s.to[%d].operation", path, i))
		if err != nil {
			return nil, err
		}
		p.Permissions = append(p.Permissions, andRules(append(rules, permissionConds...)))
	}
	if len(p.Permissions) == 0 {
		p.Permissions = []*rbacconfig.Permission{andRules(permissionConds)}
	}
	return p, nil
}

// ruleField is one list-valued field of an AuthorizationPolicy source or
// operation: its values are ORed, its not- form (notPrincipals, ...)
// negates the OR, and the caller ANDs the fields.
type ruleField[T any] struct {
	name      string
	values    []string
	notValues []string
	build     func(v, path string) (T, error)
}

// buildRuleFields builds each field's values, ORs them with or, and wraps
// a not- field's OR with not; errors name the field path under path.
func buildRuleFields[T any](fields []ruleField[T], path string, or func([]T) T, not func(T) T) ([]T, error) {
	var out []T
	for _, f := range fields {
		for _, set := range []struct {
			values []string
			not    bool
		}{{f.values, false}, {f.notValues, true}} {
			if len(set.values) == 0 {
				continue
			}
			fieldName := f.name
			if set.not {
				fieldName = "not" + strings.ToUpper(f.name[:1]) + f.name[1:]
			}
			var items []T
			for i, v := range set.values {
				item, err := f.build(v, fmt.Sprintf("%s.%s[%d]", path, fieldName, i))
				if err != nil {
					return nil, err
				}
				items = append(items, item)
			}
			item := or(items)
			if set.not {
				item = not(item)
			}
			out = append(out, item)
		}
	}
	return out, nil
}

func sourceIDs(ns string, s *security.Source, path string) ([]*rbacconfig.Principal, error) {
	if len(s.GetRequestPrincipals()) > 0 || len(s.GetNotRequestPrincipals()) > 0 {
		return nil, fmt.Errorf("%s.requestPrincipals: not supported (no JWT authentication in proxyless servers)", path)
	}
	fields := []ruleField[*rbacconfig.Principal]{
		{"principals", s.GetPrincipals(), s.GetNotPrincipals(), func(v, _ string) (*rbacconfig.Principal, error) {
			return authenticated(principalMatcher(v)), nil
		}},
		{"namespaces", s.GetNamespaces(), s.GetNotNamespaces(), func(v, _ string) (*rbacconfig.Principal, error) {
			return authenticated(regexMatcher(".*/ns/" + wildcardRegex(v) + "/.*")), nil
		}},
		{"serviceAccounts", s.GetServiceAccounts(), s.GetNotServiceAccounts(), func(v, p string) (*rbacconfig.Principal, error) {
			saNS, sa, ok := strings.Cut(v, "/")
			if !ok {
				saNS, sa = ns, v
			}
			if saNS == "" || sa == "" || strings.Contains(sa, "/") {
				return nil, fmt.Errorf("%s: %q: want <namespace>/<service account> or <service account>", p, v)
			}
			return authenticated(&matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Suffix{Suffix: "/ns/" + saNS + "/sa/" + sa}}), nil
		}},
		{"trustDomains", s.GetTrustDomains(), s.GetNotTrustDomains(), func(v, _ string) (*rbacconfig.Principal, error) {
			return authenticated(&matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Prefix{Prefix: "spiffe://" + v + "/"}}), nil
		}},
		{"ipBlocks", s.GetIpBlocks(), s.GetNotIpBlocks(), func(v, p string) (*rbacconfig.Principal, error) {
			c, err := cidr(v, p)
			if err != nil {
				return nil, err
			}
			return &rbacconfig.Principal{Identifier: &rbacconfig.Principal_DirectRemoteIp{DirectRemoteIp: c}}, nil
		}},
		{"remoteIpBlocks", s.GetRemoteIpBlocks(), s.GetNotRemoteIpBlocks(), func(v, p string) (*rbacconfig.Principal, error) {
			c, err := cidr(v, p)
			if err != nil {
				return nil, err
			}
			return &rbacconfig.Principal{Identifier: &rbacconfig.Principal_RemoteIp{RemoteIp: c}}, nil
		}},
	}
	return buildRuleFields(fields, path, orIDs, func(id *rbacconfig.Principal) *rbacconfig.Principal {
		return &rbacconfig.Principal{Identifier: &rbacconfig.Principal_NotId{NotId: id}}
	})
}

func operationRules(op *security.Operation, path string) ([]*rbacconfig.Permission, error) {
	fields := []ruleField[*rbacconfig.Permission]{
		{"hosts", op.GetHosts(), op.GetNotHosts(), func(v, _ string) (*rbacconfig.Permission, error) {
			m := wildcardMatcher(v, "")
			m.IgnoreCase = true
			return headerPermission(":authority", m), nil
		}},
		{"ports", op.GetPorts(), op.GetNotPorts(), func(v, p string) (*rbacconfig.Permission, error) {
			port, err := strconv.ParseUint(v, 10, 16)
			if err != nil || port == 0 {
				return nil, fmt.Errorf("%s: %q is not a port number", p, v)
			}
			return &rbacconfig.Permission{Rule: &rbacconfig.Permission_DestinationPort{DestinationPort: uint32(port)}}, nil
		}},
		{"methods", op.GetMethods(), op.GetNotMethods(), func(v, p string) (*rbacconfig.Permission, error) {
			if v == "" {
				return nil, fmt.Errorf("%s: empty method", p)
			}
			return headerPermission(":method", wildcardMatcher(v, "")), nil
		}},
		{"paths", op.GetPaths(), op.GetNotPaths(), func(v, p string) (*rbacconfig.Permission, error) {
			if v == "" {
				return nil, fmt.Errorf("%s: empty path", p)
			}
			return &rbacconfig.Permission{Rule: &rbacconfig.Permission_UrlPath{UrlPath: &matcher.PathMatcher{
				Rule: &matcher.PathMatcher_Path{Path: wildcardMatcher(v, "")},
			}}}, nil
		}},
	}
	return buildRuleFields(fields, path, orRules, func(rule *rbacconfig.Permission) *rbacconfig.Permission {
		return &rbacconfig.Permission{Rule: &rbacconfig.Permission_NotRule{NotRule: rule}}
	})
}

// headerKey extracts X from "request.headers[X]".
var headerKey = regexp.MustCompile(`^request\.headers\[([^\]]+)\]$`)

// condition turns a when-condition into a principal or a permission.
func condition(ns string, c *security.Condition, path string) (*rbacconfig.Principal, *rbacconfig.Permission, error) {
	if len(c.GetValues()) == 0 && len(c.GetNotValues()) == 0 {
		return nil, nil, fmt.Errorf("%s: values or notValues required", path)
	}
	key := c.GetKey()
	var src *security.Source
	var op *security.Operation
	switch {
	case headerKey.MatchString(key):
		name := strings.ToLower(headerKey.FindStringSubmatch(key)[1])
		perm := func(vals []string) *rbacconfig.Permission {
			var rules []*rbacconfig.Permission
			for _, v := range vals {
				rules = append(rules, headerPermission(name, wildcardMatcher(v, "")))
			}
			return orRules(rules)
		}
		var rules []*rbacconfig.Permission
		if len(c.GetValues()) > 0 {
			rules = append(rules, perm(c.GetValues()))
		}
		if len(c.GetNotValues()) > 0 {
			rules = append(rules, &rbacconfig.Permission{Rule: &rbacconfig.Permission_NotRule{NotRule: perm(c.GetNotValues())}})
		}
		return nil, andRules(rules), nil
	case key == "source.principal":
		src = &security.Source{Principals: c.GetValues(), NotPrincipals: c.GetNotValues()}
	case key == "source.namespace":
		src = &security.Source{Namespaces: c.GetValues(), NotNamespaces: c.GetNotValues()}
	case key == "source.ip":
		src = &security.Source{IpBlocks: c.GetValues(), NotIpBlocks: c.GetNotValues()}
	case key == "remote.ip":
		src = &security.Source{RemoteIpBlocks: c.GetValues(), NotRemoteIpBlocks: c.GetNotValues()}
	case key == "destination.port":
		op = &security.Operation{Ports: c.GetValues(), NotPorts: c.GetNotValues()}
	default:
		return nil, nil, fmt.Errorf("%s.key: %q is not supported (want request.headers[<name>], source.principal, source.namespace, source.ip, remote.ip or destination.port)", path, key)
	}
	if src != nil {
		ids, err := sourceIDs(ns, src, path)
		if err != nil {
			return nil, nil, err
		}
		return andIDs(ids), nil, nil
	}
	rules, err := operationRules(op, path)
	if err != nil {
		return nil, nil, err
	}
	return nil, andRules(rules), nil
}

func authenticated(m *matcher.StringMatcher) *rbacconfig.Principal {
	return &rbacconfig.Principal{Identifier: &rbacconfig.Principal_Authenticated_{
		Authenticated: &rbacconfig.Principal_Authenticated{PrincipalName: m},
	}}
}

// principalMatcher matches istio's principal syntax ("<td>/ns/<ns>/sa/<sa>",
// "*" wildcards at either end) against SPIFFE IDs.
func principalMatcher(v string) *matcher.StringMatcher {
	if v == "*" {
		return regexMatcher(".+")
	}
	return wildcardMatcher(strings.TrimPrefix(v, "spiffe://"), "spiffe://")
}

// wildcardMatcher follows istio's string syntax: "*" alone means present,
// "x*" a prefix, "*x" a suffix, anything else exact. prefix is put in
// front of exact and prefix values.
func wildcardMatcher(v, prefix string) *matcher.StringMatcher {
	switch {
	case v == "*":
		return regexMatcher(".+")
	case strings.HasSuffix(v, "*"):
		return &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Prefix{Prefix: prefix + strings.TrimSuffix(v, "*")}}
	case strings.HasPrefix(v, "*"):
		return &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Suffix{Suffix: strings.TrimPrefix(v, "*")}}
	}
	return &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_Exact{Exact: prefix + v}}
}

// wildcardRegex is a regex for istio's wildcard syntax, for use inside a
// larger pattern.
func wildcardRegex(v string) string {
	parts := strings.Split(v, "*")
	for i, p := range parts {
		parts[i] = regexp.QuoteMeta(p)
	}
	return strings.Join(parts, ".*")
}

func regexMatcher(re string) *matcher.StringMatcher {
	return &matcher.StringMatcher{MatchPattern: &matcher.StringMatcher_SafeRegex{SafeRegex: &matcher.RegexMatcher{Regex: re}}}
}

func headerPermission(name string, m *matcher.StringMatcher) *rbacconfig.Permission {
	return &rbacconfig.Permission{Rule: &rbacconfig.Permission_Header{Header: &route.HeaderMatcher{
		Name:                 name,
		HeaderMatchSpecifier: &route.HeaderMatcher_StringMatch{StringMatch: m},
	}}}
}

func cidr(v, path string) (*core.CidrRange, error) {
	p, err := netip.ParsePrefix(v)
	if err != nil {
		ip, ipErr := netip.ParseAddr(v)
		if ipErr != nil {
			return nil, fmt.Errorf("%s: %q is not an IP address or CIDR block", path, v)
		}
		p = netip.PrefixFrom(ip, ip.BitLen())
	}
	return &core.CidrRange{AddressPrefix: p.Addr().String(), PrefixLen: wrapperspb.UInt32(uint32(p.Bits()))}, nil
}

// andIDs is the AND of ids; none means any peer.
func andIDs(ids []*rbacconfig.Principal) *rbacconfig.Principal {
	switch len(ids) {
	case 0:
		return &rbacconfig.Principal{Identifier: &rbacconfig.Principal_Any{Any: true}}
	case 1:
		return ids[0]
	}
	return &rbacconfig.Principal{Identifier: &rbacconfig.Principal_AndIds{AndIds: &rbacconfig.Principal_Set{Ids: ids}}}
}

func orIDs(ids []*rbacconfig.Principal) *rbacconfig.Principal {
	if len(ids) == 1 {
		return ids[0]
	}
	return &rbacconfig.Principal{Identifier: &rbacconfig.Principal_OrIds{OrIds: &rbacconfig.Principal_Set{Ids: ids}}}
}

// andRules is the AND of rules; none means any request.
func andRules(rules []*rbacconfig.Permission) *rbacconfig.Permission {
	switch len(rules) {
	case 0:
		return &rbacconfig.Permission{Rule: &rbacconfig.Permission_Any{Any: true}}
	case 1:
		return rules[0]
	}
	return &rbacconfig.Permission{Rule: &rbacconfig.Permission_AndRules{AndRules: &rbacconfig.Permission_Set{Rules: rules}}}
}

func orRules(rules []*rbacconfig.Permission) *rbacconfig.Permission {
	if len(rules) == 1 {
		return rules[0]
	}
	return &rbacconfig.Permission{Rule: &rbacconfig.Permission_OrRules{OrRules: &rbacconfig.Permission_Set{Rules: rules}}}
}
