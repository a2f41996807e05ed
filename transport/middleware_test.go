package transport_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"mesh/transport"
	"mesh/xdsclient"
)

// Middleware, on a real net/http server: the handler gets the normalized
// path; escaped-slash redirects and refusals follow the chain's HCM;
// header names match whatever their case, duplicates joined with ",".
func TestMiddlewareNormalizesBeforeRBAC(t *testing.T) {
	deny := rbacFilter("rbac", xdsclient.RBACDeny,
		xdsclient.RBACPolicy{Name: "admin", Permissions: []xdsclient.RBACPermission{pathPermission(xdsclient.MatchPrefix, "/admin")}, Principals: []xdsclient.RBACPrincipal{anyPrincipal()}},
		xdsclient.RBACPolicy{Name: "debug", Permissions: []xdsclient.RBACPermission{headerPermission("X-Debug", "on,yes")}, Principals: []xdsclient.RBACPrincipal{anyPrincipal()}})
	chain := func(action xdsclient.EscapedSlashesAction) *xdsclient.FilterChain {
		return &xdsclient.FilterChain{HTTP: &xdsclient.HTTPConnectionManager{
			HTTPFilters:       []xdsclient.HTTPFilter{deny, routerFilter()},
			PathNormalization: xdsclient.PathNormalization{EscapedSlashes: action},
		}}
	}
	a := transport.NewAuthorizer(transport.WithLogger(slog.New(slog.DiscardHandler)))
	var fc atomic.Pointer[xdsclient.FilterChain]
	srv := httptest.NewUnstartedServer(a.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "%s|%s", r.RequestURI, r.URL.Path)
	})))
	srv.Config.ConnContext = func(ctx context.Context, _ net.Conn) context.Context {
		return transport.ContextWithFilterChain(ctx, fc.Load())
	}
	srv.Start()
	defer srv.Close()
	do := func(method, target string, header ...string) (int, string, string) {
		conn, err := net.Dial("tcp", srv.Listener.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		fmt.Fprintf(conn, "%s %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n%s\r\n", method, target, strings.Join(header, ""))
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(body), resp.Header.Get("Location")
	}
	fc.Store(chain(xdsclient.EscapedSlashesDefault))
	for _, tc := range []struct {
		method, target string
		header         []string
		code           int
		body           string
	}{
		{"GET", "/x/%2e%2e/y%2Fz?q=%61", nil, 200, "/y%2Fz?q=%61|/y/z"},
		{"GET", "/%61dmin", nil, 403, ""},
		{"PUT", "/ok", []string{"x-DEBUG: on\r\n", "X-Debug: yes\r\n"}, 403, ""},
		{"PUT", "/ok", []string{"X-Debug: on\r\n"}, 200, "/ok|/ok"},
		{"Get", "/ok", nil, 400, ""},
	} {
		code, body, _ := do(tc.method, tc.target, tc.header...)
		if code != tc.code || (tc.body != "" && body != tc.body) {
			t.Errorf("%s %s: %d %q, want %d %q", tc.method, tc.target, code, body, tc.code, tc.body)
		}
	}
	fc.Store(chain(xdsclient.EscapedSlashesUnescapeAndRedirect))
	if code, _, loc := do("GET", "/a%2Fb?x=1", ""); code != http.StatusTemporaryRedirect || loc != "/a/b?x=1" {
		t.Errorf("UNESCAPE_AND_REDIRECT: %d to %q, want 307 to /a/b?x=1", code, loc)
	}
	fc.Store(chain(xdsclient.EscapedSlashesReject))
	if code, _, _ := do("GET", "/a%5Cb", ""); code != http.StatusBadRequest {
		t.Errorf("REJECT_REQUEST: %d, want 400", code)
	}
}
