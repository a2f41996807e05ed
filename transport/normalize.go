package transport

import (
	"errors"
	"fmt"
	"strings"

	"mesh/xdsclient"
)

// PathNormalization is the least a server normalizes request paths before
// authorization and the handler see them, named as Istio's
// meshConfig.pathNormalization names its options. A listener resource may
// ask for more (Envoy's merge_slashes, path_with_escaped_slashes_action);
// never for less than BASE, since matching raw paths lets "/%61dmin" past a
// policy on "/admin".
type PathNormalization int

// Normalization levels, each including the one before.
const (
	// PathNormalizationBase is RFC 3986 normalization as Envoy's
	// normalize_path does it: percent-encoded unreserved characters
	// (ALPHA, DIGIT, "-", ".", "_", "~") decoded once, "\" turned into
	// "/", "." and ".." segments resolved; %00 refused with 400; the
	// query left as it is.
	PathNormalizationBase PathNormalization = iota
	// PathNormalizationMergeSlashes also merges repeated slashes.
	PathNormalizationMergeSlashes
	// PathNormalizationDecodeAndMergeSlashes also decodes %2F and %5C
	// before the rest, so "/admin%2Fx" is "/admin/x".
	PathNormalizationDecodeAndMergeSlashes
)

func (p PathNormalization) String() string {
	switch p {
	case PathNormalizationBase:
		return "BASE"
	case PathNormalizationMergeSlashes:
		return "MERGE_SLASHES"
	case PathNormalizationDecodeAndMergeSlashes:
		return "DECODE_AND_MERGE_SLASHES"
	}
	return fmt.Sprintf("PathNormalization(%d)", int(p))
}

// pathRules is the normalization in force for one request: the listener's
// fields raised to the configured floor.
type pathRules struct {
	mergeSlashes   bool
	escapedSlashes xdsclient.EscapedSlashesAction
}

func rulesFor(floor PathNormalization, hcm *xdsclient.HTTPConnectionManager) pathRules {
	var r pathRules
	if hcm != nil {
		r.mergeSlashes = hcm.PathNormalization.MergeSlashes
		r.escapedSlashes = hcm.PathNormalization.EscapedSlashes
	}
	// normalize_path=false is not honoured: BASE is the floor.
	if floor >= PathNormalizationMergeSlashes {
		r.mergeSlashes = true
	}
	if floor >= PathNormalizationDecodeAndMergeSlashes {
		switch r.escapedSlashes {
		case xdsclient.EscapedSlashesDefault, xdsclient.EscapedSlashesKeep:
			r.escapedSlashes = xdsclient.EscapedSlashesUnescapeAndForward
		}
	}
	return r
}

// Errors of normalizePath; each means 400 Bad Request.
var (
	errPathNUL            = errors.New("path contains %00")
	errPathEscapedSlashes = errors.New("path contains an escaped slash (%2F or %5C)")
	errPathNotOrigin      = errors.New("path is not in origin form")
)

// normalizePath applies r to path in Envoy's order: escaped slashes, RFC
// 3986 normalization, then merged slashes. redirect reports escaped slashes
// unescaped under UNESCAPE_AND_REDIRECT.
func normalizePath(path string, r pathRules) (out string, redirect bool, err error) {
	// Fragments never reach a server; Envoy strips them.
	if i := strings.IndexByte(path, '#'); i >= 0 {
		path = path[:i]
	}
	p, query, hasQuery := strings.Cut(path, "?")
	if p == "" || p[0] != '/' {
		return "", false, errPathNotOrigin
	}
	if strings.Contains(p, "%00") || strings.IndexByte(p, 0) >= 0 {
		return "", false, errPathNUL
	}
	switch r.escapedSlashes {
	case xdsclient.EscapedSlashesReject:
		if hasEscapedSlash(p) {
			return "", false, errPathEscapedSlashes
		}
	case xdsclient.EscapedSlashesUnescapeAndForward, xdsclient.EscapedSlashesUnescapeAndRedirect:
		if hasEscapedSlash(p) {
			p = unescapeSlashes(p)
			redirect = r.escapedSlashes == xdsclient.EscapedSlashesUnescapeAndRedirect
		}
	}
	p = canonicalPath(p)
	if r.mergeSlashes {
		p = mergeSlashes(p)
	}
	if hasQuery {
		p += "?" + query
	}
	return p, redirect, nil
}

func hasEscapedSlash(p string) bool {
	for i := 0; i+2 < len(p); i++ {
		if p[i] == '%' && isEscapedSlash(p[i+1], p[i+2]) {
			return true
		}
	}
	return false
}

func isEscapedSlash(a, b byte) bool {
	return (a == '2' && (b == 'f' || b == 'F')) || (a == '5' && (b == 'c' || b == 'C'))
}

func unescapeSlashes(p string) string {
	var b strings.Builder
	b.Grow(len(p))
	for i := 0; i < len(p); i++ {
		if p[i] == '%' && i+2 < len(p) && isEscapedSlash(p[i+1], p[i+2]) {
			if p[i+1] == '2' {
				b.WriteByte('/')
			} else {
				b.WriteByte('\\')
			}
			i += 2
			continue
		}
		b.WriteByte(p[i])
	}
	return b.String()
}

// canonicalPath is RFC 3986 normalization of an absolute path as Envoy's
// (Chromium's) path canonicalizer does it: escapes of unreserved
// characters decoded once and other escapes kept as written, bytes not
// allowed in a path escaped, "\" read as "/", dot segments (in any escaped
// spelling) resolved.
func canonicalPath(p string) string {
	var b strings.Builder
	b.Grow(len(p))
	for i := 0; i < len(p); i++ {
		c := p[i]
		switch {
		case c == '%' && i+2 < len(p) && isHex(p[i+1]) && isHex(p[i+2]):
			if d := unhex(p[i+1])<<4 | unhex(p[i+2]); isUnreserved(d) {
				b.WriteByte(d)
			} else {
				b.WriteString(p[i : i+3])
			}
			i += 2
		case c == '\\':
			b.WriteByte('/')
		case mustEscapeInPath(c):
			fmt.Fprintf(&b, "%%%02X", c)
		default:
			b.WriteByte(c)
		}
	}
	return removeDotSegments(b.String())
}

// removeDotSegments resolves "." and ".." segments of an absolute path
// (RFC 3986 section 5.2.4); ".." above the root stays at the root, and a
// path ending in a dot segment keeps its trailing slash.
func removeDotSegments(p string) string {
	if !strings.Contains(p, "/.") {
		return p
	}
	segs := strings.Split(p[1:], "/")
	out := make([]string, 0, len(segs))
	for i, s := range segs {
		last := i == len(segs)-1
		switch s {
		case ".":
			if last {
				out = append(out, "")
			}
		case "..":
			if len(out) > 0 {
				out = out[:len(out)-1]
			}
			if last {
				out = append(out, "")
			}
		default:
			out = append(out, s)
		}
	}
	return "/" + strings.Join(out, "/")
}

func mergeSlashes(p string) string {
	if !strings.Contains(p, "//") {
		return p
	}
	var b strings.Builder
	b.Grow(len(p))
	for i := 0; i < len(p); i++ {
		if p[i] == '/' && i > 0 && p[i-1] == '/' {
			continue
		}
		b.WriteByte(p[i])
	}
	return b.String()
}

func isUnreserved(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
		c == '-' || c == '.' || c == '_' || c == '~'
}

// mustEscapeInPath reports bytes a path canonicalizer escapes: controls,
// space, non-ASCII and the characters RFC 3986 never allows in a path.
func mustEscapeInPath(c byte) bool {
	if c <= ' ' || c >= 0x7f {
		return true
	}
	switch c {
	case '"', '<', '>', '`', '{', '}':
		return true
	}
	return false
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case '0' <= c && c <= '9':
		return c - '0'
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10
	}
	return c - 'A' + 10
}

// validMethodName reports whether fullMethod is gRPC's "/service/method",
// both parts non-empty and the path not otherwise shaped; anything else
// would make RBAC path rules and the server's method lookup disagree.
func validMethodName(fullMethod string) bool {
	if len(fullMethod) < 4 || fullMethod[0] != '/' {
		return false
	}
	svc, method, ok := strings.Cut(fullMethod[1:], "/")
	return ok && svc != "" && method != "" && !strings.Contains(method, "/") &&
		!strings.ContainsAny(fullMethod, "%\\?#") && svc != "." && svc != ".." && method != "." && method != ".."
}

// validMethod reports whether an HTTP method is an upper-case token, as
// Envoy requires; "get" is not GET, and letting it through would let it
// past policies on methods.
func validMethod(m string) bool {
	if m == "" {
		return false
	}
	for i := 0; i < len(m); i++ {
		c := m[i]
		if !('A' <= c && c <= 'Z' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}
