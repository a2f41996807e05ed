package xdsclient

import (
	"fmt"
	"strings"
)

// clusterHeaderName validates RouteAction.cluster_header and returns it
// lowercased, the form gRPC metadata keys and HTTP/2 header names take.
// The header's value names the cluster per request, so it must be a plain
// text header a client can set: not a pseudo-header, not a binary one.
func clusterHeaderName(name, path string) (string, error) {
	if name == "" {
		return "", fmt.Errorf("%s: must not be empty", path)
	}
	if strings.HasPrefix(name, ":") {
		return "", fmt.Errorf("%s: %q: pseudo-headers cannot name a cluster", path, name)
	}
	for i := 0; i < len(name); i++ {
		if !isHeaderTokenByte(name[i]) {
			return "", fmt.Errorf("%s: %q: invalid header name character %q at offset %d", path, name, name[i], i)
		}
	}
	lower := strings.ToLower(name)
	if strings.HasSuffix(lower, "-bin") {
		return "", fmt.Errorf("%s: %q: binary headers cannot name a cluster", path, name)
	}
	return lower, nil
}

// isHeaderTokenByte reports whether c may appear in an HTTP header name
// (RFC 9110 token characters).
func isHeaderTokenByte(c byte) bool {
	switch {
	case 'a' <= c && c <= 'z', 'A' <= c && c <= 'Z', '0' <= c && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0
}
