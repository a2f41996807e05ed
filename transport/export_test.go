package transport

import (
	"context"
	"net/http"
	"time"

	"mesh/xdsclient"
)

// WithSniffTimeout bounds how long a server waits for a new connection's
// first bytes (default 10s); tests shorten it. The same deadline covers
// the TLS handshake.
func WithSniffTimeout(d time.Duration) handshakeOption {
	return handshakeOption(func(o *options) {
		if d > 0 {
			o.sniffTimeout = d
		}
	})
}

// WithCurrentFilterChain makes an Authorizer enforce, for a connection
// accepted with chosen, the chain current returns (nil: chosen), as the
// inbound servers do when their listener resource changes.
func WithCurrentFilterChain(current func(ctx context.Context, chosen *xdsclient.FilterChain) *xdsclient.FilterChain) AuthorizerOption {
	return authorizerOption(func(o *options) { o.currentChain = current })
}

// Middleware is what HTTPInbound's Handler authorizes requests with.
func (a *Authorizer) Middleware(next http.Handler) http.Handler { return a.middleware(next) }

// ContextWithFilterChain is how HTTPInbound tells Middleware a request's
// filter chain.
var ContextWithFilterChain = contextWithFilterChain

// NormalizePath returns the request target path (path and query, as sent
// on the request line or in :path) normalized as Envoy does under p: see
// PathNormalization. The query is kept as it is. An error means the
// request is to be refused with 400.
func NormalizePath(path string, p PathNormalization) (string, error) {
	out, _, err := normalizePath(path, rulesFor(p, nil))
	return out, err
}

// The RBAC engine the Authorizer runs, for table tests.
type (
	RBACRequest  = rbacRequest
	RBACDecision = rbacDecision
)

var (
	EvaluateRBAC        = evaluateRBAC
	DetectProtocol      = detectProtocol
	ErrPermissionDenied = errPermissionDenied
)

// handshakeOption applies to NewServerCredentials and the inbound servers.
type handshakeOption func(*options)

func (f handshakeOption) applyServer(o *options)      { f(o) }
func (f handshakeOption) applyGRPCInbound(o *options) { f(o) }
func (f handshakeOption) applyHTTPInbound(o *options) { f(o) }

type authorizerOption func(*options)

func (f authorizerOption) applyAuthorizer(o *options) { f(o) }
