package xdsclient

import (
	"fmt"
	"net/url"
	"slices"
	"strings"
)

// xdstpScheme starts a new-style resource name (xRFC TP1, gRFC A47).
const xdstpScheme = "xdstp://"

// typeURLPrefix is what a type URL adds to a proto's full name; an xdstp
// name's type segment is the name without it.
const typeURLPrefix = "type.googleapis.com/"

// xdstpName is a parsed "xdstp://<authority>/<type>/<id>?<params>" name.
type xdstpName struct {
	authority string
	typeName  string // e.g. envoy.config.listener.v3.Listener
	id        string // may contain '/'
	params    []string
}

// isXDSTP reports whether name is a new-style name.
func isXDSTP(name string) bool { return strings.HasPrefix(name, xdstpScheme) }

// parseXDSTPName splits a new-style name into its parts. It does not check
// the type against a resource kind; canonicalName does.
func parseXDSTPName(name string) (xdstpName, error) {
	var n xdstpName
	rest, ok := strings.CutPrefix(name, xdstpScheme)
	if !ok {
		return n, fmt.Errorf("%q does not start with %q", name, xdstpScheme)
	}
	if strings.Contains(rest, "#") {
		return n, fmt.Errorf("%q: fragments (xdstp directives) are not supported", name)
	}
	rest, query, _ := strings.Cut(rest, "?")
	authority, path, ok := strings.Cut(rest, "/")
	if !ok {
		return n, fmt.Errorf("%q: missing the resource type after the authority", name)
	}
	typeName, id, ok := strings.Cut(path, "/")
	if !ok || typeName == "" {
		return n, fmt.Errorf("%q: want xdstp://<authority>/<type>/<id>", name)
	}
	if id == "" {
		return n, fmt.Errorf("%q: empty resource id", name)
	}
	n.authority, n.typeName, n.id = authority, typeName, id
	if query != "" {
		for p := range strings.SplitSeq(query, "&") {
			if p == "" {
				continue
			}
			if _, err := url.QueryUnescape(p); err != nil {
				return n, fmt.Errorf("%q: context parameter %q: %w", name, p, err)
			}
			n.params = append(n.params, p)
		}
		// Context parameters are a set: their order in a name is not
		// significant, so the canonical form sorts them (xRFC TP1).
		slices.Sort(n.params)
	}
	return n, nil
}

// String is the canonical form: context parameters sorted.
func (n xdstpName) String() string {
	var b strings.Builder
	b.WriteString(xdstpScheme)
	b.WriteString(n.authority)
	b.WriteByte('/')
	b.WriteString(n.typeName)
	b.WriteByte('/')
	b.WriteString(n.id)
	if len(n.params) > 0 {
		b.WriteByte('?')
		b.WriteString(strings.Join(n.params, "&"))
	}
	return b.String()
}

// canonicalResourceName returns name in the form the client matches
// resources by: an old-style name unchanged, an xdstp name with its context
// parameters sorted. typeURL, when set, must match an xdstp name's type
// segment, e.g. "type.googleapis.com/envoy.config.listener.v3.Listener"
// for "xdstp://auth/envoy.config.listener.v3.Listener/id".
//
// # Experimental
func canonicalResourceName(typeURL, name string) (string, error) {
	if !isXDSTP(name) {
		return name, nil
	}
	n, err := parseXDSTPName(name)
	if err != nil {
		return "", fmt.Errorf("resource name %w", err)
	}
	if want := strings.TrimPrefix(typeURL, typeURLPrefix); want != "" && n.typeName != want {
		return "", fmt.Errorf("resource name %q: type %q does not match the resource type %q", name, n.typeName, want)
	}
	return n.String(), nil
}

// percentEncodePath escapes s for use in a URI path (RFC 3986 section
// 3.3) while keeping '/', as gRFC A47 asks of template substitutions.
func percentEncodePath(s string) string {
	parts := strings.Split(s, "/")
	for i, p := range parts {
		parts[i] = url.PathEscape(p)
	}
	return strings.Join(parts, "/")
}

// applyTemplate replaces "%s" in tmpl with value, percent-encoded when the
// template makes a new-style name.
func applyTemplate(tmpl, value string) string {
	if isXDSTP(tmpl) {
		value = percentEncodePath(value)
	}
	return strings.ReplaceAll(tmpl, "%s", value)
}

// defaultAuthorityListenerTemplate is an authority's
// client_listener_resource_name_template when unset (gRFC A47).
func defaultAuthorityListenerTemplate(authority string) string {
	return xdstpScheme + authority + "/" + strings.TrimPrefix(typeURLListener, typeURLPrefix) + "/%s"
}

// ClientListenerName returns the name of the Listener a client channel to
// target subscribes to (gRFC A47):
//   - "host:port" (or "xds:///host:port"): client_default_listener_resource_name_template
//     applied to it; the target itself when the template is unset;
//   - "xds://<authority>/host:port" or "xdstp://<authority>/host:port": the
//     authority's client_listener_resource_name_template (default
//     "xdstp://<authority>/envoy.config.listener.v3.Listener/%s") applied
//     to the path;
//   - a full "xdstp://<authority>/envoy.config.listener.v3.Listener/<id>"
//     name: that name, canonicalized.
//
// An authority missing from the bootstrap still yields a name with the
// default template; a watch on it then fails naming the authority.
func (b *Bootstrap) ClientListenerName(target string) string {
	if rest, ok := strings.CutPrefix(target, xdstpScheme); ok {
		if canon, err := canonicalResourceName(typeURLListener, target); err == nil {
			return canon
		}
		authority, path, _ := strings.Cut(rest, "/")
		return b.authorityListenerName(authority, path)
	}
	if rest, ok := strings.CutPrefix(target, "xds://"); ok {
		authority, path, _ := strings.Cut(rest, "/")
		if authority != "" {
			return b.authorityListenerName(authority, path)
		}
		target = path
	} else if rest, ok := strings.CutPrefix(target, "xds:"); ok {
		target = rest
	}
	tmpl := b.ClientDefaultListenerResourceNameTemplate
	if tmpl == "" {
		return target
	}
	return applyTemplate(tmpl, target)
}

func (b *Bootstrap) authorityListenerName(authority, path string) string {
	tmpl := b.Authorities[authority].ClientListenerResourceNameTemplate
	if tmpl == "" {
		tmpl = defaultAuthorityListenerTemplate(authority)
	}
	return applyTemplate(tmpl, path)
}

// ServerListenerName applies server_listener_resource_name_template to a
// server's listening "ip:port" (gRFC A36, percent-encoded for an xdstp
// template as gRFC A47 asks). It returns "" when the template is unset.
func (b *Bootstrap) ServerListenerName(addr string) string {
	if b.ServerListenerResourceNameTemplate == "" {
		return ""
	}
	return applyTemplate(b.ServerListenerResourceNameTemplate, addr)
}

// serversFor returns the servers of an xdstp authority: its own
// xds_servers, else the top-level ones. ok is false for an authority the
// bootstrap does not list.
func (b *Bootstrap) serversFor(authority string) (servers []ServerConfig, ok bool) {
	a, ok := b.Authorities[authority]
	if !ok {
		return nil, false
	}
	if len(a.Servers) > 0 {
		return a.Servers, true
	}
	return b.Servers, true
}
