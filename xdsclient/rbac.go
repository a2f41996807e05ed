package xdsclient

import "net/netip"

// RBAC is the decoded config of an Envoy RBAC HTTP filter
// (envoy.extensions.filters.http.rbac.v3.RBAC) as gRFC A41 reads it. It is
// set as HTTPFilter.Config for filters of that type.
type RBAC struct {
	// Rules is nil when the filter has no rules: it then lets every request
	// through, as Envoy does.
	Rules *RBACRules
}

// RBACAction is what a matching policy does.
type RBACAction int

// RBAC actions (Envoy's config.rbac.v3.RBAC.Action).
const (
	// RBACAllow lets a request through only if some policy matches it.
	RBACAllow RBACAction = iota
	// RBACDeny refuses a request if some policy matches it.
	RBACDeny
	// RBACLog lets every request through and records the matching policy
	// (istio's AUDIT).
	RBACLog
)

// String returns ALLOW, DENY or LOG.
func (a RBACAction) String() string {
	switch a {
	case RBACAllow:
		return "ALLOW"
	case RBACDeny:
		return "DENY"
	case RBACLog:
		return "LOG"
	}
	return "UNKNOWN"
}

// RBACRules is an action and the policies it applies to.
type RBACRules struct {
	Action RBACAction
	// Policies are sorted by name: Envoy evaluates them in that order, and
	// the first match names the decision.
	Policies []RBACPolicy
}

// RBACPolicy matches a request when any of its permissions and any of its
// principals match.
type RBACPolicy struct {
	Name        string
	Permissions []RBACPermission
	Principals  []RBACPrincipal
}

// PermissionKind says which field of an RBACPermission applies.
type PermissionKind int

// Permission kinds (Envoy's config.rbac.v3.Permission rule).
const (
	PermissionAny                  PermissionKind = iota
	PermissionAnd                                 // every one of Rules
	PermissionOr                                  // any one of Rules
	PermissionNot                                 // not Rule
	PermissionHeader                              // Header
	PermissionURLPath                             // URLPath, matched on the path without its query
	PermissionDestinationIP                       // DestinationIP
	PermissionDestinationPort                     // DestinationPort
	PermissionDestinationPortRange                // PortRange
	PermissionRequestedServerName                 // ServerName, matched against the TLS SNI
)

// RBACPermission is one node of a permission tree; Kind says which field
// applies.
type RBACPermission struct {
	Kind            PermissionKind
	Rules           []RBACPermission // for PermissionAnd and PermissionOr
	Rule            *RBACPermission  // for PermissionNot
	Header          *HeaderMatcher
	URLPath         *StringMatcher
	DestinationIP   netip.Prefix
	DestinationPort uint32
	PortRange       Int64Range
	ServerName      *StringMatcher
}

// PrincipalKind says which field of an RBACPrincipal applies.
type PrincipalKind int

// Principal kinds (Envoy's config.rbac.v3.Principal identifier).
const (
	PrincipalAny PrincipalKind = iota
	PrincipalAnd               // every one of IDs
	PrincipalOr                // any one of IDs
	PrincipalNot               // not ID
	// PrincipalAuthenticated matches TLS peers with a verified certificate
	// whose name (URI SANs, else DNS SANs, else the subject) satisfies
	// PrincipalName; a nil PrincipalName matches any such peer.
	PrincipalAuthenticated
	PrincipalSourceIP // SourceIP (source_ip, direct_remote_ip and remote_ip alike: there is no proxy in between)
	PrincipalHeader   // Header
	PrincipalURLPath  // URLPath
)

// RBACPrincipal is one node of a principal tree; Kind says which field
// applies.
type RBACPrincipal struct {
	Kind          PrincipalKind
	IDs           []RBACPrincipal // for PrincipalAnd and PrincipalOr
	ID            *RBACPrincipal  // for PrincipalNot
	PrincipalName *StringMatcher
	SourceIP      netip.Prefix
	Header        *HeaderMatcher
	URLPath       *StringMatcher
}
