package transport

import (
	"context"
	"log/slog"
	"net"
	"time"

	"mesh/xdsclient"
)

// Each constructor takes its own option type, so that an option it would
// not use does not compile rather than being ignored (as go-spiffe's
// X509SourceOption). An option some constructors share implements each of
// their types.

// ClientOption configures NewClientCredentials and NewHTTPDialer.
type ClientOption interface{ applyClient(*options) }

// ServerOption configures NewServerCredentials.
type ServerOption interface{ applyServer(*options) }

// AuthorizerOption configures NewAuthorizer.
type AuthorizerOption interface{ applyAuthorizer(*options) }

// HTTPInboundOption configures NewHTTPInbound.
type HTTPInboundOption interface{ applyHTTPInbound(*options) }

// GRPCInboundOption configures NewGRPCInbound.
type GRPCInboundOption interface{ applyGRPCInbound(*options) }

// InboundOption configures NewGRPCInbound and NewHTTPInbound.
type InboundOption interface {
	GRPCInboundOption
	HTTPInboundOption
}

// Option configures every constructor of this package.
type Option interface {
	ClientOption
	ServerOption
	AuthorizerOption
	InboundOption
}

type options struct {
	logger       *slog.Logger
	sniffTimeout time.Duration
	// pathNormalization: see WithPathNormalization.
	pathNormalization PathNormalization
	// alpn is the application protocols server credentials accept over
	// TLS, in order of preference: "h2", all gRPC speaks, unless the HTTP
	// server says otherwise; "" accepts TLS clients that offer none.
	alpn []string
	// Inbound servers only.
	drainPeriod  time.Duration
	maxConnAge   time.Duration
	servingState func(addr net.Addr, serving bool, err error)
	// peerMetadata is what gRPC connections exchange at the handshake
	// (WithPeerMetadata); "" exchanges nothing.
	peerMetadata string
	// currentChain: what an Authorizer enforces on open connections; set
	// by the inbound servers (and tests).
	currentChain func(ctx context.Context, chosen *xdsclient.FilterChain) *xdsclient.FilterChain
}

func newOptions[O any](apply func(O, *options), opts []O) options {
	o := options{logger: slog.Default(), sniffTimeout: defaultSniffTimeout, alpn: []string{alpnH2}, drainPeriod: defaultDrainPeriod}
	for _, opt := range opts {
		if any(opt) != nil {
			apply(opt, &o)
		}
	}
	return o
}

// The option kinds: each applies where its type says.
type (
	anyOption     func(*options) // every constructor
	httpOption    func(*options) // NewHTTPInbound
	inboundOption func(*options) // NewGRPCInbound, NewHTTPInbound
)

func (f anyOption) applyClient(o *options)      { f(o) }
func (f anyOption) applyServer(o *options)      { f(o) }
func (f anyOption) applyAuthorizer(o *options)  { f(o) }
func (f anyOption) applyGRPCInbound(o *options) { f(o) }
func (f anyOption) applyHTTPInbound(o *options) { f(o) }

func (f httpOption) applyHTTPInbound(o *options) { f(o) }

func (f inboundOption) applyGRPCInbound(o *options) { f(o) }
func (f inboundOption) applyHTTPInbound(o *options) { f(o) }

// WithLogger sets where handshake failures, authorization decisions and
// serving changes are logged; the default is slog.Default().
func WithLogger(logger *slog.Logger) Option {
	return anyOption(func(o *options) {
		if logger != nil {
			o.logger = logger
		}
	})
}

// WithPathNormalization sets the least path normalization applied to HTTP
// requests whatever the listener resource says (default
// PathNormalizationBase): for control planes, such as istiod for proxyless
// workloads, whose listeners do not carry Envoy's normalization fields.
func WithPathNormalization(p PathNormalization) HTTPInboundOption {
	return httpOption(func(o *options) { o.pathNormalization = p })
}

// WithDrainPeriod sets how long a connection whose filter chain changed or
// went may finish its calls after GOAWAY before it is closed (default 5s,
// Envoy's drain_timeout).
func WithDrainPeriod(d time.Duration) InboundOption {
	return inboundOption(func(o *options) {
		if d > 0 {
			o.drainPeriod = d
		}
	})
}

// WithMaxConnectionAge has connections older than d closed gracefully,
// so clients reconnect with a fresh handshake before the certificates of
// the old one expire: gRPC's keepalive GOAWAY at that age; on HTTP, with
// the next response ("Connection: close", GOAWAY on HTTP/2). 0, the
// default, leaves them open.
func WithMaxConnectionAge(d time.Duration) InboundOption {
	return inboundOption(func(o *options) {
		if d > 0 {
			o.maxConnAge = d
		}
	})
}

// WithServingStateCallback calls fn when a listener starts or stops
// serving: when its inbound listener resource arrives (serving), and when
// the control plane says it does not exist (err wraps
// ErrListenerNotFound) or rejects the first one. Calls for one listener
// are serialized and made once per change.
func WithServingStateCallback(fn func(addr net.Addr, serving bool, err error)) InboundOption {
	return inboundOption(func(o *options) { o.servingState = fn })
}

// defaultSniffTimeout bounds how long a server waits for a new
// connection's first bytes, so that silent clients cannot hold handshake
// slots forever.
const defaultSniffTimeout = 10 * time.Second

// defaultDrainPeriod: see WithDrainPeriod.
const defaultDrainPeriod = 5 * time.Second
