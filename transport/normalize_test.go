package transport

import (
	"fmt"
	"strings"
	"testing"

	"mesh/xdsclient"
)

// The cases come from istio.io's "Authorization Policy Normalization" page
// (what each option does to a path) and from Envoy's path normalization
// behaviour it refers to (escapes other than unreserved characters kept as
// written, %00 refused, dot segments in any escaped spelling resolved).
func TestNormalizePath(t *testing.T) {
	type want struct{ base, merge, decode string }
	bad := "400"
	cases := []struct {
		in string
		want
	}{
		{"/xyz", want{"/xyz", "/xyz", "/xyz"}},
		// Single percent-encoded unreserved characters, decoded once.
		{"/%61dmin", want{"/admin", "/admin", "/admin"}},
		{"/ad%6Din", want{"/admin", "/admin", "/admin"}},
		{"/internal/%73ecret", want{"/internal/secret", "/internal/secret", "/internal/secret"}},
		{"/%41%5a%30%39%2d%5f%7e%2e", want{"/AZ09-_~.", "/AZ09-_~.", "/AZ09-_~."}},
		{"/some%2fdata/%61%62%63", want{"/some%2fdata/abc", "/some%2fdata/abc", "/some/data/abc"}},
		{"/%2561dmin", want{"/%2561dmin", "/%2561dmin", "/%2561dmin"}}, // never decoded twice
		{"/%5c%25", want{"/%5c%25", "/%5c%25", "/%25"}},
		{"/%c0%af", want{"/%c0%af", "/%c0%af", "/%c0%af"}},
		// %00 is always refused.
		{"/admin%00", want{bad, bad, bad}},
		{"/xyz/.%00../abc", want{bad, bad, bad}},
		{"/xyz/AAAAA%%0000/abc", want{bad, bad, bad}},
		// Backslashes.
		{"/some\\data", want{"/some/data", "/some/data", "/some/data"}},
		{"/a/..\\c", want{"/c", "/c", "/c"}},
		{"/public\\..\\admin", want{"/admin", "/admin", "/admin"}},
		{"/admin%5Cx", want{"/admin%5Cx", "/admin%5Cx", "/admin/x"}},
		// Multiple slashes.
		{"/some//data///abc", want{"/some//data///abc", "/some/data/abc", "/some/data/abc"}},
		{"//admin", want{"//admin", "/admin", "/admin"}},
		{"/%2Fadmin", want{"/%2Fadmin", "/%2Fadmin", "/admin"}},
		// Dot segments.
		{"/public/./data/abc/../xyz", want{"/public/data/xyz", "/public/data/xyz", "/public/data/xyz"}},
		{"/public/../admin", want{"/admin", "/admin", "/admin"}},
		{"/public/%2e%2e/admin", want{"/admin", "/admin", "/admin"}},
		{"/public/%2E./admin", want{"/admin", "/admin", "/admin"}},
		{"/./admin", want{"/admin", "/admin", "/admin"}},
		{"/a/b/../../../../c", want{"/c", "/c", "/c"}},
		{"/a/b/..", want{"/a/", "/a/", "/a/"}},
		{"/public/..%2Fadmin", want{"/public/..%2Fadmin", "/public/..%2Fadmin", "/admin"}},
		{"/.hidden/x", want{"/.hidden/x", "/.hidden/x", "/.hidden/x"}},
		// The query is kept as it is; the fragment goes.
		{"/foo?v=1/../x%61", want{"/foo?v=1/../x%61", "/foo?v=1/../x%61", "/foo?v=1/../x%61"}},
		{"/a//b?a=///c", want{"/a//b?a=///c", "/a/b?a=///c", "/a/b?a=///c"}},
		{"/admin#frag", want{"/admin", "/admin", "/admin"}},
		// Case is kept.
		{"/A/B/C", want{"/A/B/C", "/A/B/C", "/A/B/C"}},
		// Bytes a path may not hold are escaped.
		{"/a b", want{"/a%20b", "/a%20b", "/a%20b"}},
		{"*", want{bad, bad, bad}},
	}
	for _, tc := range cases {
		for _, mode := range []struct {
			p    PathNormalization
			want string
		}{{PathNormalizationBase, tc.base}, {PathNormalizationMergeSlashes, tc.merge}, {PathNormalizationDecodeAndMergeSlashes, tc.decode}} {
			got, err := NormalizePath(tc.in, mode.p)
			if err != nil {
				got = bad
			}
			if got != mode.want {
				t.Errorf("NormalizePath(%q, %v) = %q (err %v), want %q", tc.in, mode.p, got, err, mode.want)
			}
		}
	}
}

func TestListenerPathNormalizationFields(t *testing.T) {
	yes := true
	hcm := func(pn xdsclient.PathNormalization) *xdsclient.HTTPConnectionManager {
		return &xdsclient.HTTPConnectionManager{PathNormalization: pn}
	}
	cases := []struct {
		name     string
		hcm      *xdsclient.HTTPConnectionManager
		in, want string
		redirect bool
	}{
		{"merge_slashes", hcm(xdsclient.PathNormalization{NormalizePath: &yes, MergeSlashes: true}), "//a//b", "/a/b", false},
		{"unescape and forward", hcm(xdsclient.PathNormalization{EscapedSlashes: xdsclient.EscapedSlashesUnescapeAndForward}), "/a%2Fb%5cc", "/a/b/c", false},
		{"unescape and redirect", hcm(xdsclient.PathNormalization{EscapedSlashes: xdsclient.EscapedSlashesUnescapeAndRedirect}), "/a%2Fb", "/a/b", true},
		{"reject", hcm(xdsclient.PathNormalization{EscapedSlashes: xdsclient.EscapedSlashesReject}), "/a%2Fb", "400", false},
		{"keep", hcm(xdsclient.PathNormalization{EscapedSlashes: xdsclient.EscapedSlashesKeep}), "/a%2Fb", "/a%2Fb", false},
		// normalize_path=false cannot take a server below BASE.
		{"normalize_path false", hcm(xdsclient.PathNormalization{NormalizePath: new(bool)}), "/%61dmin", "/admin", false},
	}
	for _, tc := range cases {
		got, redirect, err := normalizePath(tc.in, rulesFor(PathNormalizationBase, tc.hcm))
		if err != nil {
			got = "400"
		}
		if got != tc.want || redirect != tc.redirect {
			t.Errorf("%s: %q -> %q redirect=%t, want %q redirect=%t", tc.name, tc.in, got, redirect, tc.want, tc.redirect)
		}
	}
}

func TestGRPCMethodNameShape(t *testing.T) {
	for name, want := range map[string]bool{
		"/pkg.Svc/Method": true, "/Svc/M": true,
		"": false, "/": false, "//": false, "/pkg.Svc/": false, "//Method": false, "pkg.Svc/Method": false,
		"/pkg.Svc/Method/x": false, "/pkg.Svc/../Admin": false, "/pkg.Svc/%41dmin": false,
		"/pkg.Svc/Method?x": false, "/./Method": false, "/pkg.Svc\\Method/x": false,
	} {
		if got := validMethodName(name); got != want {
			t.Errorf("validMethodName(%q) = %t, want %t", name, got, want)
		}
	}
}

// Paths are normalized as Envoy under Istio does before any policy or
// handler sees them.
func TestNormalizePathAsEnvoyUnderIstio(t *testing.T) {
	var out strings.Builder
	for _, p := range []string{"/%61dmin", "/public/%2e%2e/admin", "/public\\..\\admin", "//admin?x=/../y", "/admin%2Fx"} {
		base, _ := NormalizePath(p, PathNormalizationBase)
		strict, _ := NormalizePath(p, PathNormalizationDecodeAndMergeSlashes)
		fmt.Fprintf(&out, "%-22s BASE %-16s DECODE_AND_MERGE_SLASHES %s\n", p, base, strict)
	}
	_, err := NormalizePath("/admin%00", PathNormalizationBase)
	fmt.Fprintln(&out, err)
	if got, want := out.String(), `/%61dmin               BASE /admin           DECODE_AND_MERGE_SLASHES /admin
/public/%2e%2e/admin   BASE /admin           DECODE_AND_MERGE_SLASHES /admin
/public\..\admin       BASE /admin           DECODE_AND_MERGE_SLASHES /admin
//admin?x=/../y        BASE //admin?x=/../y  DECODE_AND_MERGE_SLASHES /admin?x=/../y
/admin%2Fx             BASE /admin%2Fx       DECODE_AND_MERGE_SLASHES /admin/x
path contains %00
`; got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
}
