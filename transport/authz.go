package transport

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"mesh/internal/incomingmd"
	"mesh/xdsclient"
)

// errPermissionDenied is wrapped by authorize's error when RBAC refuses a
// request.
var errPermissionDenied = errors.New("rbac: access denied")

// Authorizer enforces on gRPC calls the RBAC HTTP filters (gRFC A41) of
// the filter chain each connection is served by, read from the
// connection's AuthInfo (set by NewServerCredentials); HTTPInbound enforces
// them on net/http requests. Calls on connections without a known chain
// are let through: there is no policy to apply to them.
//
// Refusals are logged at Warn with the filter and policy that decided;
// matching LOG policies (istio's AUDIT) are logged at Info and never
// refuse.
type Authorizer struct {
	logger       *slog.Logger
	currentChain func(ctx context.Context, chosen *xdsclient.FilterChain) *xdsclient.FilterChain
	pathFloor    PathNormalization
	incoming     incomingmd.Reader // reads a call's headers without copying
}

// NewAuthorizer returns an Authorizer. WithLogger sets where its decisions
// are logged.
func NewAuthorizer(opts ...AuthorizerOption) *Authorizer {
	return newAuthorizer(newOptions(AuthorizerOption.applyAuthorizer, opts))
}

func newAuthorizer(o options) *Authorizer {
	return &Authorizer{logger: o.logger, currentChain: o.currentChain, pathFloor: o.pathNormalization, incoming: incomingmd.NewReader()}
}

// chainFor returns the filter chain to enforce for a request on a
// connection accepted with chosen.
func (a *Authorizer) chainFor(ctx context.Context, chosen *xdsclient.FilterChain) *xdsclient.FilterChain {
	if a.currentChain != nil && chosen != nil {
		if fc := a.currentChain(ctx, chosen); fc != nil {
			return fc
		}
	}
	return chosen
}

// authorize evaluates req against the RBAC filters among filters. The
// error wraps errPermissionDenied when the request is refused.
func (a *Authorizer) authorize(ctx context.Context, filters []xdsclient.HTTPFilter, req *rbacRequest) error {
	d := evaluateRBAC(filters, req)
	for _, logged := range d.Logged {
		a.logger.LogAttrs(ctx, slog.LevelInfo, "rbac: audit policy matched",
			slog.String("policy", logged), slog.String("path", req.Path), slog.String("peer", peerName(req)))
	}
	if d.Allowed {
		return nil
	}
	policy := d.Policy
	if policy == "" {
		policy = "(no ALLOW policy matched)"
	}
	a.logger.LogAttrs(ctx, slog.LevelWarn, "rbac: request denied",
		slog.String("filter", d.Filter), slog.String("policy", policy),
		slog.String("path", req.Path), slog.String("peer", peerName(req)))
	return fmt.Errorf("%w: filter %q, policy %s", errPermissionDenied, d.Filter, policy)
}

func peerName(req *rbacRequest) string {
	if req.PeerCertificate != nil && len(req.PeerCertificate.URIs) > 0 {
		return req.PeerCertificate.URIs[0].String()
	}
	if req.Source.IsValid() {
		return req.Source.String()
	}
	return "unknown"
}

// ServerOptions returns the unary and stream interceptors as gRPC server
// options, chained after any others.
func (a *Authorizer) ServerOptions() []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.ChainUnaryInterceptor(a.UnaryServerInterceptor()),
		grpc.ChainStreamInterceptor(a.StreamServerInterceptor()),
	}
}

// UnaryServerInterceptor returns a gRPC interceptor that refuses
// unauthorized calls with codes.PermissionDenied.
func (a *Authorizer) UnaryServerInterceptor() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		if err := a.authorizeRPC(ctx, info.FullMethod); err != nil {
			return nil, err
		}
		return handler(ctx, req)
	}
}

// StreamServerInterceptor returns a gRPC interceptor that refuses
// unauthorized streams with codes.PermissionDenied before the handler runs.
func (a *Authorizer) StreamServerInterceptor() grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		if err := a.authorizeRPC(ss.Context(), info.FullMethod); err != nil {
			return err
		}
		return handler(srv, ss)
	}
}

func (a *Authorizer) authorizeRPC(ctx context.Context, fullMethod string) error {
	// Checked before anything else: RBAC rules on paths only mean what
	// they say for paths of the one shape a gRPC server resolves.
	if !validMethodName(fullMethod) {
		a.logger.LogAttrs(ctx, slog.LevelWarn, "rbac: malformed gRPC method name refused", slog.String("path", fullMethod))
		return status.Errorf(codes.Unimplemented, "malformed method name %q: want /service/method", fullMethod)
	}
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil
	}
	ai := authInfoOf(p.AuthInfo)
	if ai == nil {
		return nil
	}
	fc := a.chainFor(ctx, ai.FilterChain)
	if fc == nil || fc.HTTP == nil {
		return nil
	}
	// Headers are read one by one, as policies ask for them, without
	// copying: grpc-go's API would cost every call a map and a slice per
	// header.
	req := &rbacRequest{
		Source:      addrPortOf(p.Addr),
		Destination: addrPortOf(p.LocalAddr),
		Method:      http.MethodPost,
		Path:        fullMethod,
		incoming:    ctx,
		reader:      a.incoming,
	}
	if ai.State != nil {
		req.ServerName = ai.State.ServerName
		// PeerID is set only once the certificate was verified.
		if !ai.PeerID.IsZero() && len(ai.State.PeerCertificates) > 0 {
			req.PeerCertificate = ai.State.PeerCertificates[0]
			// An X509-SVID has one URI SAN, which PeerID was parsed from
			// (x509svid.IDFromCert), so its text is the ID's.
			req.peerURI = ai.PeerID.String()
		}
	}
	if err := a.authorize(ctx, fc.HTTP.HTTPFilters, req); err != nil {
		return status.Error(codes.PermissionDenied, errPermissionDenied.Error())
	}
	return nil
}

func authInfoOf(ai any) *AuthInfo {
	switch v := ai.(type) {
	case AuthInfo:
		return &v
	case *AuthInfo:
		return v
	}
	return nil
}

type filterChainKey struct{}

// contextWithFilterChain returns ctx carrying the filter chain a connection
// is served by, where Middleware finds the chain's RBAC filters.
func contextWithFilterChain(ctx context.Context, fc *xdsclient.FilterChain) context.Context {
	return context.WithValue(ctx, filterChainKey{}, fc)
}

// filterChainFromContext returns the filter chain set by
// contextWithFilterChain, or nil.
func filterChainFromContext(ctx context.Context) *xdsclient.FilterChain {
	fc, _ := ctx.Value(filterChainKey{}).(*xdsclient.FilterChain)
	return fc
}

// middleware returns next guarded by RBAC: unauthorized requests get 403
// Forbidden. The filter chain comes from the request context (where
// HTTPInbound's Handler puts it); the peer certificate from r.TLS, which
// the server's TLS config must have verified (as NewServerCredentials'
// does).
//
// Before RBAC, the request is made what it would be behind Envoy: a method
// that is not an upper-case token gets 400, and the path is normalized as
// the chain's HttpConnectionManager and WithPathNormalization say (400 for
// %00 and refused escaped slashes). Policies and next both see the
// normalized path, in r.URL and r.RequestURI.
func (a *Authorizer) middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !validMethod(r.Method) {
			a.logger.LogAttrs(r.Context(), slog.LevelWarn, "rbac: invalid method refused", slog.String("method", r.Method))
			http.Error(w, "invalid method: want an upper-case token", http.StatusBadRequest)
			return
		}
		fc := a.chainFor(r.Context(), filterChainFromContext(r.Context()))
		var hcm *xdsclient.HTTPConnectionManager
		if fc != nil {
			hcm = fc.HTTP
		}
		r, redirect, err := a.normalizeRequest(r, hcm)
		if err != nil {
			a.logger.LogAttrs(r.Context(), slog.LevelWarn, "rbac: request path refused", slog.String("path", r.RequestURI), slog.String("error", err.Error()))
			http.Error(w, "bad request: "+err.Error(), http.StatusBadRequest)
			return
		}
		if redirect {
			http.Redirect(w, r, r.RequestURI, http.StatusTemporaryRedirect)
			return
		}
		if fc == nil || fc.HTTP == nil {
			next.ServeHTTP(w, r)
			return
		}
		req := &rbacRequest{
			Source:    addrPortFromString(r.RemoteAddr),
			Method:    r.Method,
			Path:      r.RequestURI,
			Authority: r.Host,
			Header:    func(name string) []string { return r.Header.Values(name) },
		}
		if req.Path == "" {
			req.Path = r.URL.RequestURI()
		}
		if local, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok {
			req.Destination = addrPortOf(local)
		}
		if r.TLS != nil {
			req.ServerName = r.TLS.ServerName
			if len(r.TLS.PeerCertificates) > 0 {
				req.PeerCertificate = r.TLS.PeerCertificates[0]
			}
		}
		if err := a.authorize(r.Context(), fc.HTTP.HTTPFilters, req); err != nil {
			http.Error(w, "RBAC: access denied", http.StatusForbidden)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// normalizeRequest returns r with its path normalized (a shallow copy when
// it changed). CONNECT and "OPTIONS *" have no path to normalize.
func (a *Authorizer) normalizeRequest(r *http.Request, hcm *xdsclient.HTTPConnectionManager) (*http.Request, bool, error) {
	target := r.RequestURI
	if target == "" {
		target = r.URL.RequestURI()
	}
	if target == "*" || r.Method == http.MethodConnect {
		return r, false, nil
	}
	if !strings.HasPrefix(target, "/") {
		// Absolute form ("http://host/path"): the path is what follows
		// the authority.
		if _, rest, ok := strings.Cut(target, "://"); ok {
			target = "/"
			if i := strings.IndexAny(rest, "/?"); i >= 0 {
				target = rest[i:]
				if target[0] == '?' {
					target = "/" + target
				}
			}
		}
	}
	norm, redirect, err := normalizePath(target, rulesFor(a.pathFloor, hcm))
	if err != nil {
		return r, false, err
	}
	if norm == r.RequestURI && !redirect {
		return r, false, nil
	}
	p, _, _ := strings.Cut(norm, "?")
	decoded, err := url.PathUnescape(p)
	if err != nil {
		return r, false, fmt.Errorf("path %q: %w", p, err)
	}
	u := *r.URL
	u.Path, u.RawPath = decoded, ""
	if u.EscapedPath() != p {
		u.RawPath = p
	}
	r = r.WithContext(r.Context())
	r.URL = &u
	r.RequestURI = norm
	return r, redirect, nil
}

func addrPortOf(a net.Addr) netip.AddrPort {
	if a == nil {
		return netip.AddrPort{}
	}
	if ta, ok := a.(*net.TCPAddr); ok {
		return ta.AddrPort()
	}
	return addrPortFromString(a.String())
}

func addrPortFromString(s string) netip.AddrPort {
	ap, err := netip.ParseAddrPort(strings.TrimSpace(s))
	if err != nil {
		return netip.AddrPort{}
	}
	return ap
}
