package xdsclient

import (
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	"google.golang.org/grpc/codes"

	routepb "mesh/xdsclient/internal/lite/envoy/config/route/v3"
)

// Retry defaults (gRFC A44; Envoy's defaults for HTTP).
const (
	defaultRetryNumRetries  = 1
	defaultRetryBackoffBase = 25 * time.Millisecond
	// The default maximum backoff is 10 times the base.
	defaultRetryBackoffFactor = 10
)

// RetryPolicy is a route's retry policy (gRFC A44 for gRPC; Envoy's
// retry_on conditions for HTTP). It is immutable.
type RetryPolicy struct {
	// GRPCCodes are the gRPC status codes an attempt may fail with and be
	// retried: from the tokens cancelled, deadline-exceeded, internal,
	// resource-exhausted and unavailable.
	GRPCCodes []codes.Code
	// HTTP conditions: "5xx", "gateway-error" (502, 503, 504), "reset" (the
	// connection failed after it was established, no response), and
	// "connect-failure".
	HTTP5xx, HTTPGatewayError, HTTPReset, HTTPConnectFailure bool
	// HTTPStatusCodes are retriable_status_codes, used when retry_on has
	// "retriable-status-codes".
	HTTPStatusCodes []uint32
	// NumRetries is how many times a request may be retried (default 1).
	NumRetries uint32
	// BackoffBase and BackoffMax bound the exponential backoff with jitter
	// between attempts (defaults 25ms and 10 times the base).
	BackoffBase, BackoffMax time.Duration
	// PerTryTimeout bounds each attempt of a unary RPC or an HTTP request
	// (Envoy's per_try_timeout, which Istio's retries.perTryTimeout sets;
	// grpc-go ignores it); 0 means attempts are bounded by the request's
	// deadline only. An attempt that times out is retried under 5xx,
	// gateway-error or deadline-exceeded. A stream's attempt is the whole
	// stream, bounded by the route timeout alone.
	PerTryTimeout time.Duration
	// RefusedStream retries an attempt the server refused before
	// processing it (HTTP/2 REFUSED_STREAM), which is always safe.
	RefusedStream bool
}

// RetriesGRPC reports whether an attempt that failed with code may be
// retried.
func (p *RetryPolicy) RetriesGRPC(code codes.Code) bool {
	return p != nil && slices.Contains(p.GRPCCodes, code)
}

// RetriesHTTPStatus reports whether an HTTP response with status may be
// retried.
func (p *RetryPolicy) RetriesHTTPStatus(status int) bool {
	if p == nil {
		return false
	}
	switch {
	case p.HTTP5xx && status >= 500 && status <= 599:
		return true
	case p.HTTPGatewayError && (status == 502 || status == 503 || status == 504):
		return true
	}
	for _, c := range p.HTTPStatusCodes {
		if int(c) == status {
			return true
		}
	}
	return false
}

// QueryParameterMatcher matches one HTTP query parameter. Exactly one of
// Match and Present is used.
type QueryParameterMatcher struct {
	Name    string
	Match   *StringMatcher
	Present bool
}

// applyRetryOn sets what token asks for on p and reports whether mesh
// implements it. Envoy has more tokens (istiod emits e.g.
// "retriable-4xx"); those are skipped and listed as ignored.
func applyRetryOn(p *RetryPolicy, token string) bool {
	switch token {
	case "cancelled":
		p.GRPCCodes = append(p.GRPCCodes, codes.Canceled)
	case "deadline-exceeded":
		p.GRPCCodes = append(p.GRPCCodes, codes.DeadlineExceeded)
	case "internal":
		p.GRPCCodes = append(p.GRPCCodes, codes.Internal)
	case "resource-exhausted":
		p.GRPCCodes = append(p.GRPCCodes, codes.ResourceExhausted)
	case "unavailable":
		p.GRPCCodes = append(p.GRPCCodes, codes.Unavailable)
	case "5xx":
		p.HTTP5xx = true
	case "gateway-error":
		p.HTTPGatewayError = true
	case "reset":
		p.HTTPReset = true
	case "connect-failure":
		p.HTTPConnectFailure = true
	case "refused-stream":
		p.RefusedStream = true
	case "retriable-status-codes":
		// Enables retriable_status_codes, decoded by the caller.
	default:
		return false
	}
	return true
}

// retryPolicy decodes an Envoy RetryPolicy; nil in, nil out. Unknown
// retry_on tokens are skipped and reported as ignored, never fatal.
func (dc *decodeContext) retryPolicy(pb *routepb.RetryPolicy, path string) (*RetryPolicy, error) {
	if pb == nil {
		return nil, nil
	}
	p := &RetryPolicy{NumRetries: defaultRetryNumRetries, BackoffBase: defaultRetryBackoffBase}
	var unknown []string
	statusCodes := false
	for token := range strings.SplitSeq(pb.GetRetryOn(), ",") {
		token = strings.TrimSpace(token)
		if token == "" {
			continue
		}
		if !applyRetryOn(p, token) {
			unknown = append(unknown, token)
			continue
		}
		statusCodes = statusCodes || token == "retriable-status-codes"
	}
	if len(unknown) > 0 {
		dc.ignore(path+".retry_on", "unsupported conditions "+strings.Join(unknown, ",")+" skipped")
	}
	slices.Sort(p.GRPCCodes)
	p.GRPCCodes = slices.Compact(p.GRPCCodes)
	if statusCodes {
		for i, c := range pb.GetRetriableStatusCodes() {
			if c < 100 || c > 599 {
				return nil, fmt.Errorf("%s.retriable_status_codes[%d]: %d is not an HTTP status", path, i, c)
			}
			p.HTTPStatusCodes = append(p.HTTPStatusCodes, c)
		}
	}
	if n := pb.GetNumRetries(); n != nil {
		if n.GetValue() == 0 {
			return nil, fmt.Errorf("%s.num_retries: must be positive", path)
		}
		p.NumRetries = n.GetValue()
	}
	if bo := pb.GetRetryBackOff(); bo != nil {
		bpath := path + ".retry_back_off"
		if bo.GetBaseInterval() == nil {
			return nil, fmt.Errorf("%s.base_interval: missing", bpath)
		}
		base, err := nonNegativeDuration(bo.GetBaseInterval(), bpath+".base_interval")
		if err != nil {
			return nil, err
		}
		if base == 0 {
			return nil, fmt.Errorf("%s.base_interval: must be positive", bpath)
		}
		p.BackoffBase = base
		maxBackoff, err := nonNegativeDuration(bo.GetMaxInterval(), bpath+".max_interval")
		if err != nil {
			return nil, err
		}
		if bo.GetMaxInterval() != nil && maxBackoff < base {
			return nil, fmt.Errorf("%s.max_interval: %v is below base_interval %v", bpath, maxBackoff, base)
		}
		p.BackoffMax = maxBackoff
	}
	if p.BackoffMax == 0 {
		p.BackoffMax = defaultRetryBackoffFactor * p.BackoffBase
	}
	if pt := pb.GetPerTryTimeout(); pt != nil {
		d, err := nonNegativeDuration(pt, path+".per_try_timeout")
		if err != nil {
			return nil, err
		}
		p.PerTryTimeout = d
	}
	// What mesh does not apply is said, never dropped silently. istiod's
	// default policy sets the host predicate and its attempts.
	for _, f := range []struct {
		name string
		set  bool
	}{
		{"retry_host_predicate", len(pb.GetRetryHostPredicate()) > 0},
		{"host_selection_retry_max_attempts", pb.GetHostSelectionRetryMaxAttempts() != 0},
		{"retry_priority", pb.GetRetryPriority() != nil},
		{"per_try_idle_timeout", pb.GetPerTryIdleTimeout() != nil},
		{"rate_limited_retry_back_off", pb.GetRateLimitedRetryBackOff() != nil},
		{"retriable_headers", len(pb.GetRetriableHeaders()) > 0},
		{"retriable_request_headers", len(pb.GetRetriableRequestHeaders()) > 0},
		{"retry_options_predicates", len(pb.GetRetryOptionsPredicates()) > 0},
	} {
		if f.set {
			dc.ignore(path+"."+f.name, "not implemented")
		}
	}
	return p, nil
}

// queryParameterMatchers decodes a route's query_parameters.
func queryParameterMatchers(pbs []*routepb.QueryParameterMatcher, path string) ([]QueryParameterMatcher, error) {
	var out []QueryParameterMatcher
	for i, q := range pbs {
		qpath := fmt.Sprintf("%s[%d]", path, i)
		if q.GetName() == "" {
			return nil, fmt.Errorf("%s.name: missing", qpath)
		}
		m := QueryParameterMatcher{Name: q.GetName()}
		switch s := q.GetQueryParameterMatchSpecifier().(type) {
		case *routepb.QueryParameterMatcher_StringMatch:
			sm, err := stringMatcher(s.StringMatch, qpath+".string_match")
			if err != nil {
				return nil, err
			}
			m.Match = &sm
		case *routepb.QueryParameterMatcher_PresentMatch:
			if !s.PresentMatch {
				return nil, fmt.Errorf("%s.present_match: must be true", qpath)
			}
			m.Present = true
		default:
			return nil, fmt.Errorf("%s: query_parameter_match_specifier: missing", qpath)
		}
		out = append(out, m)
	}
	return out, nil
}

// HashPolicyKind is what a HashPolicy hashes.
type HashPolicyKind int

// Hash policy kinds mesh implements (gRFC A42, plus query parameters for
// HTTP); Envoy's cookie and connection_properties policies are skipped.
const (
	// HashHeader hashes the values of the header Name.
	HashHeader HashPolicyKind = iota
	// HashChannelID hashes an ID of the client channel (filter_state key
	// "io.grpc.channel_id"), so a channel sticks to one endpoint.
	HashChannelID
	// HashQueryParameter hashes the first value of the query parameter Name
	// (HTTP only).
	HashQueryParameter
)

// HashPolicy is one of a route's hash policies, applied in order; a
// Terminal policy that produced a hash ends the list.
type HashPolicy struct {
	Kind     HashPolicyKind
	Name     string
	Terminal bool
	// Rewrite, when set, replaces every match in a header's value with
	// Substitution (Go's $1 form) before it is hashed (gRFC A42's
	// regex_rewrite).
	Rewrite      *regexp.Regexp
	Substitution string
}

// channelIDKey is the filter_state key gRPC hashes as its channel ID.
const channelIDKey = "io.grpc.channel_id"

// hashPolicies decodes a route's hash_policy list, skipping (and reporting
// as ignored) the policies mesh does not implement, as gRPC does.
func (dc *decodeContext) hashPolicies(pbs []*routepb.RouteAction_HashPolicy, path string) ([]HashPolicy, error) {
	var out []HashPolicy
	for i, hp := range pbs {
		hpath := fmt.Sprintf("%s[%d]", path, i)
		p := HashPolicy{Terminal: hp.GetTerminal()}
		switch s := hp.GetPolicySpecifier().(type) {
		case *routepb.RouteAction_HashPolicy_Header_:
			if s.Header.GetHeaderName() == "" {
				return nil, fmt.Errorf("%s.header.header_name: missing", hpath)
			}
			p.Kind, p.Name = HashHeader, strings.ToLower(s.Header.GetHeaderName())
			if rr := s.Header.GetRegexRewrite(); rr != nil {
				re, err := compileRegex(rr.GetPattern(), hpath+".header.regex_rewrite.pattern")
				if err != nil {
					return nil, err
				}
				p.Rewrite, p.Substitution = unanchored(re), envoySubstitution(rr.GetSubstitution())
			}
		case *routepb.RouteAction_HashPolicy_QueryParameter_:
			if s.QueryParameter.GetName() == "" {
				return nil, fmt.Errorf("%s.query_parameter.name: missing", hpath)
			}
			p.Kind, p.Name = HashQueryParameter, s.QueryParameter.GetName()
		case *routepb.RouteAction_HashPolicy_FilterState_:
			if s.FilterState.GetKey() != channelIDKey {
				dc.ignore(hpath, fmt.Sprintf("filter_state key %q skipped (only %q is hashed)", s.FilterState.GetKey(), channelIDKey))
				continue
			}
			p.Kind = HashChannelID
		default:
			dc.ignore(hpath, fmt.Sprintf("unsupported hash policy %s skipped", oneofField(hp, "policy_specifier")))
			continue
		}
		out = append(out, p)
	}
	return out, nil
}

// unanchored undoes compileRegex's anchoring: a rewrite replaces every
// match in the value, not the value as a whole.
func unanchored(re *regexp.Regexp) *regexp.Regexp {
	src := re.String()
	if strings.HasPrefix(src, "^(?:") && strings.HasSuffix(src, ")$") {
		return regexp.MustCompile(src[len("^(?:") : len(src)-len(")$")])
	}
	return re
}

// envoySubstitution turns an Envoy (RE2) substitution, whose groups are
// \1..\9, into Go's template form, escaping Go's own "$".
func envoySubstitution(sub string) string {
	var b strings.Builder
	for i := 0; i < len(sub); i++ {
		switch c := sub[i]; {
		case c == '$':
			b.WriteString("$$")
		case c == '\\' && i+1 < len(sub) && sub[i+1] >= '0' && sub[i+1] <= '9':
			b.WriteString("${" + string(sub[i+1]) + "}")
			i++
		case c == '\\' && i+1 < len(sub) && sub[i+1] == '\\':
			b.WriteByte('\\')
			i++
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}
