package telemetry

import (
	"context"
	"net"
	"strconv"
	"strings"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
	grpccodes "google.golang.org/grpc/codes"
	"google.golang.org/grpc/stats"
	"google.golang.org/grpc/status"
)

// instrumentationName names the tracer, so backends can tell mesh's spans
// from those of other instrumentation.
const instrumentationName = "mesh/telemetry"

// Attribute keys from the OpenTelemetry semantic conventions for RPC spans.
const (
	keyRPCSystem         = attribute.Key("rpc.system")
	keyRPCService        = attribute.Key("rpc.service")
	keyRPCMethod         = attribute.Key("rpc.method")
	keyRPCGRPCStatusCode = attribute.Key("rpc.grpc.status_code")
	keyServerAddress     = attribute.Key("server.address")
	keyServerPort        = attribute.Key("server.port")
	keyPeerAddress       = attribute.Key("network.peer.address")
	keyPeerPort          = attribute.Key("network.peer.port")
)

// NewClientHandler returns a gRPC stats handler that records a client span
// for every RPC attempt and sends its trace context to the server in the
// request metadata. Install it with grpc.WithStatsHandler.
func NewClientHandler(opts ...Option) stats.Handler {
	return newHandler(true, opts)
}

// NewServerHandler returns a gRPC stats handler that continues the trace
// context a client sent, records a server span for every RPC and puts that
// span in the context the service method receives. Install it with
// grpc.StatsHandler.
func NewServerHandler(opts ...Option) stats.Handler {
	return newHandler(false, opts)
}

// handler is the one stats.Handler behind both constructors. Each concern
// (traces now; metrics and access logs later) keeps its long-lived parts here
// and its per-RPC parts in rpcState, so an RPC pays for one state allocation
// however many concerns are switched on.
type handler struct {
	client     bool
	tracer     trace.Tracer
	propagator propagation.TextMapPropagator
	// startOptions is built once: passing a fresh variadic slice to the
	// Tracer interface would allocate on every RPC.
	startOptions []trace.SpanStartOption
	systemAttr   attribute.KeyValue
	extraAttrs   []attribute.KeyValue
}

func newHandler(client bool, opts []Option) *handler {
	cfg := newConfig(opts)
	kind := trace.SpanKindServer
	if client {
		kind = trace.SpanKindClient
	}
	return &handler{
		client:       client,
		tracer:       cfg.tracerProvider.Tracer(instrumentationName),
		propagator:   cfg.propagator,
		startOptions: []trace.SpanStartOption{trace.WithSpanKind(kind)},
		systemAttr:   keyRPCSystem.String("grpc"),
		extraAttrs:   cfg.attributes,
	}
}

// rpcState is what a handler remembers about one RPC (one attempt, on the
// client) between TagRPC and the stats.End that closes it.
type rpcState struct {
	span trace.Span
	// headers is scratch space for injection, kept here to share the state's
	// allocation.
	headers outgoingHeaders
}

// rpcStateKey names the handler that owns a state, so that two handlers
// installed on one channel or server each find their own.
type rpcStateKey struct{ owner *handler }

// rpcContext carries an rpcState. It stands in for context.WithValue so
// that the context node and the state are a single allocation.
type rpcContext struct {
	context.Context
	owner *handler
	state rpcState
}

func (c *rpcContext) Value(key any) any {
	if k, ok := key.(rpcStateKey); ok && k.owner == c.owner {
		return &c.state
	}
	return c.Context.Value(key)
}

func (h *handler) stateFromContext(ctx context.Context) *rpcState {
	st, _ := ctx.Value(rpcStateKey{owner: h}).(*rpcState)
	return st
}

// TagRPC starts the RPC's span. On the client it also writes the span's
// trace context into the outgoing metadata; on the server it first reads the
// client's trace context from the incoming metadata.
func (h *handler) TagRPC(ctx context.Context, info *stats.RPCTagInfo) context.Context {
	var fullMethod string
	var nameResolutionDelayed bool
	if info != nil {
		fullMethod = info.FullMethodName
		nameResolutionDelayed = info.NameResolutionDelay
	}
	if !h.client {
		ctx = h.propagator.Extract(ctx, incomingHeaders{ctx: ctx})
	}
	ctx, span := h.tracer.Start(ctx, spanName(fullMethod), h.startOptions...)
	if span.IsRecording() {
		h.setMethodAttributes(span, fullMethod)
		if nameResolutionDelayed {
			span.AddEvent("delayed name resolution complete")
		}
	}
	rc := &rpcContext{owner: h, state: rpcState{span: span}}
	if h.client {
		rc.state.headers.reset()
		h.propagator.Inject(ctx, &rc.state.headers)
		ctx = rc.state.headers.attachOutgoing(ctx)
		rc.state.headers = outgoingHeaders{} // metadata holds its own copy now
	}
	rc.Context = ctx
	return rc
}

// HandleRPC adds what the RPC's events reveal to its span and ends the span
// when the RPC ends.
func (h *handler) HandleRPC(ctx context.Context, rs stats.RPCStats) {
	st := h.stateFromContext(ctx)
	if st == nil {
		return // not an RPC this handler tagged
	}
	span := st.span
	switch rs := rs.(type) {
	case *stats.OutHeader:
		if h.client && span.IsRecording() {
			setServerAttributes(span, rs.Authority)
			setPeerAttributes(span, rs.RemoteAddr)
		}
	case *stats.InHeader:
		if !h.client && span.IsRecording() {
			setPeerAttributes(span, rs.RemoteAddr)
		}
	case *stats.DelayedPickComplete:
		if span.IsRecording() {
			span.AddEvent("delayed load balancer pick complete")
		}
	case *stats.End:
		h.endSpan(span, rs.Error)
	}
}

// TagConn returns ctx unchanged: spans are per RPC.
func (h *handler) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context {
	return ctx
}

// HandleConn ignores connection events.
func (h *handler) HandleConn(context.Context, stats.ConnStats) {}

func (h *handler) endSpan(span trace.Span, err error) {
	if span.IsRecording() {
		code := grpccodes.OK
		if err != nil {
			s := status.Convert(err)
			code = s.Code()
			if h.client || serverFault(code) {
				span.SetStatus(codes.Error, s.Message())
			}
		}
		span.SetAttributes(keyRPCGRPCStatusCode.Int(int(code)))
	}
	span.End()
}

// serverFault reports whether a server span should be marked as an error:
// the semantic conventions count only codes that point at the server itself,
// not those that blame the caller (NotFound, InvalidArgument, ...).
func serverFault(c grpccodes.Code) bool {
	switch c {
	case grpccodes.Unknown, grpccodes.DeadlineExceeded, grpccodes.Unimplemented,
		grpccodes.Internal, grpccodes.Unavailable, grpccodes.DataLoss:
		return true
	}
	return false
}

// spanName turns "/package.Service/Method" into "package.Service/Method", as
// the RPC semantic conventions name spans.
func spanName(fullMethod string) string {
	name := strings.TrimPrefix(fullMethod, "/")
	if name == "" {
		return "grpc"
	}
	return name
}

// splitMethod splits "/package.Service/Method" into its service and method;
// a name without a service yields only a method.
func splitMethod(fullMethod string) (service, method string) {
	name := strings.TrimPrefix(fullMethod, "/")
	if i := strings.LastIndexByte(name, '/'); i >= 0 {
		return name[:i], name[i+1:]
	}
	return "", name
}

func (h *handler) setMethodAttributes(span trace.Span, fullMethod string) {
	service, method := splitMethod(fullMethod)
	attrs := make([]attribute.KeyValue, 0, 3+len(h.extraAttrs))
	attrs = append(attrs, h.systemAttr)
	if service != "" {
		attrs = append(attrs, keyRPCService.String(service))
	}
	if method != "" {
		attrs = append(attrs, keyRPCMethod.String(method))
	}
	attrs = append(attrs, h.extraAttrs...)
	span.SetAttributes(attrs...)
}

// setServerAttributes records the logical server the client addressed: the
// request's :authority, not the IP it resolved to.
func setServerAttributes(span trace.Span, authority string) {
	if authority == "" {
		return
	}
	host, port, ok := splitHostPort(authority)
	if !ok {
		span.SetAttributes(keyServerAddress.String(authority))
		return
	}
	span.SetAttributes(keyServerAddress.String(host), keyServerPort.Int(port))
}

// setPeerAttributes records the address at the other end of the connection.
func setPeerAttributes(span trace.Span, addr net.Addr) {
	if addr == nil {
		return
	}
	if tcp, ok := addr.(*net.TCPAddr); ok {
		span.SetAttributes(keyPeerAddress.String(tcp.IP.String()), keyPeerPort.Int(tcp.Port))
		return
	}
	s := addr.String()
	if host, port, ok := splitHostPort(s); ok {
		span.SetAttributes(keyPeerAddress.String(host), keyPeerPort.Int(port))
		return
	}
	if s != "" {
		span.SetAttributes(keyPeerAddress.String(s))
	}
}

func splitHostPort(hostport string) (host string, port int, ok bool) {
	host, portText, err := net.SplitHostPort(hostport)
	if err != nil {
		return "", 0, false
	}
	port, err = strconv.Atoi(portText)
	if err != nil || port < 0 || port > 65535 {
		return "", 0, false
	}
	return host, port, true
}
