package telemetry

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"mesh/internal/routeinfo"
)

// Attribute keys from the OpenTelemetry semantic conventions for HTTP spans.
const (
	keyHTTPMethod     = attribute.Key("http.request.method")
	keyHTTPStatus     = attribute.Key("http.response.status_code")
	keyURLPath        = attribute.Key("url.path")
	keyProtocolVer    = attribute.Key("network.protocol.version")
	keyClientAddress  = attribute.Key("client.address")
	keyURLScheme      = attribute.Key("url.scheme")
	keyUserAgent      = attribute.Key("user_agent.original")
	httpSpanNameOther = "HTTP"
)

// Middleware wraps a net/http server handler with what NewServerHandler
// does for gRPC: a server span continuing the caller's trace, the
// x-request-id (generated when absent, set on the request and available
// through RequestIDFromContext), Istio peer metadata read from the request
// and (given WithWorkload) sent in the response headers, Istio's standard
// metrics with reporter "destination" and request_protocol "http", and an
// access log record. Byte counts are those of headers and bodies, as
// Envoy's.
func Middleware(next http.Handler, opts ...Option) http.Handler {
	if next == nil {
		next = http.NotFoundHandler()
	}
	return &middleware{core: newCore(false, opts), next: next}
}

type middleware struct {
	*core
	next http.Handler
}

func (m *middleware) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	start := m.now()
	ctx := m.propagator.Extract(r.Context(), propagation.HeaderCarrier(r.Header))
	requestID := r.Header.Get(HeaderRequestID)
	if requestID == "" {
		requestID = newRequestID()
		r.Header.Set(HeaderRequestID, requestID) // as Envoy does for the app behind it
	}
	ctx = WithRequestID(ctx, requestID)
	ctx, span := m.tracer.Start(ctx, httpSpanName(r.Method), trace.WithSpanKind(trace.SpanKindServer))
	if span.IsRecording() {
		span.SetAttributes(keyHTTPMethod.String(r.Method), keyURLPath.String(r.URL.Path),
			keyProtocolVer.String(protocolVersion(r.Proto)), keyRequestID.String(requestID),
			keyUserAgent.String(r.UserAgent()))
		if host, port, ok := splitHostPort(r.Host); ok {
			span.SetAttributes(keyServerAddress.String(host), keyServerPort.Int(port))
		} else if r.Host != "" {
			span.SetAttributes(keyServerAddress.String(r.Host))
		}
		if host, port, ok := splitHostPort(r.RemoteAddr); ok {
			span.SetAttributes(keyClientAddress.String(host), keyPeerAddress.String(host), keyPeerPort.Int(port))
		}
		span.SetAttributes(m.extraAttrs...)
	}
	if m.metaValue != "" {
		w.Header().Set(HeaderPeerMetadataID, m.metaID)
		w.Header().Set(HeaderPeerMetadata, m.metaValue)
	}

	scheme := "http"
	if r.TLS != nil {
		scheme = "https"
	}
	reqHeaderBytes := httpRequestHeaderBytes(r.Method, r.RequestURI, r.Host, scheme, r.Header)
	ex := exchange{
		protocol:     protocolHTTP,
		httpProtocol: r.Proto,
		method:       r.Method,
		path:         r.URL.Path,
		authority:    r.Host,
		peer:         m.peerFromHeader(r.Header.Get(HeaderPeerMetadata)),
		start:        start,
		remoteAddr:   r.RemoteAddr,
		requestID:    requestID,
		spanContext:  span.SpanContext(),
	}
	if r.TLS != nil {
		ex.peerPrincipal = principalOf(r.TLS)
		ex.mutualTLS = len(r.TLS.PeerCertificates) > 0
	}
	if addr, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok {
		ex.localAddr = addr.String()
	}
	var body *countingBody
	if r.Body != nil && r.Body != http.NoBody {
		body = &countingBody{ReadCloser: r.Body}
		r.Body = body
	}
	rw := &responseRecorder{ResponseWriter: w}

	panicked := true
	defer func() {
		ex.responseCode = rw.statusCode()
		if panicked {
			ex.responseCode, ex.flags = http.StatusInternalServerError, "DC"
		} else if r.Context().Err() != nil && !rw.wroteHeader.Load() {
			ex.flags = "DC" // the client left before any answer
		}
		ex.duration = m.now().Sub(start)
		// Wire bytes, headers included, as Envoy counts them.
		ex.requestBytes = reqHeaderBytes
		if body != nil {
			ex.requestBytes += body.n.Load()
		}
		ex.responseBytes = httpResponseHeaderBytes(w.Header()) + rw.implicitHeaderBytes() + rw.written.Load()
		if span.IsRecording() {
			span.SetAttributes(keyHTTPStatus.Int(ex.responseCode))
			if ex.responseCode >= 500 {
				span.SetStatus(codes.Error, http.StatusText(ex.responseCode))
			}
			if ex.flags != "" && ex.flags != noResponseFlags {
				span.SetAttributes(keyResponseFlags.String(ex.flags))
			}
		}
		span.End()
		m.record(ctx, &ex)
	}()
	m.next.ServeHTTP(rw, r.WithContext(ctx))
	panicked = false
}

// Transport wraps a net/http client transport (http.DefaultTransport when
// nil) with what NewClientHandler does for gRPC: a client span, its trace
// context, an x-request-id and (given WithWorkload) this workload's peer
// metadata in the request headers, the server's peer metadata learned from
// the response headers, Istio's standard metrics with reporter "source" and
// an access log record. Metrics are recorded when the response body is
// read to its end or closed, so durations and sizes cover the whole body.
// The request passed in is never modified. Its request counts are reported
// while the returned RoundTripper is reachable, as a client that uses it
// keeps it: one nobody holds any more is collected, and its counts with
// it.
func Transport(rt http.RoundTripper, opts ...Option) http.RoundTripper {
	if rt == nil {
		rt = http.DefaultTransport
	}
	return &transport{core: newCore(true, opts), next: rt}
}

type transport struct {
	*core
	next http.RoundTripper
}

func (t *transport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req == nil || req.URL == nil {
		return nil, errors.New("telemetry: round trip: request or its URL is nil")
	}
	start := t.now()
	ctx := req.Context()
	slot, _ := ctx.Value(routeinfo.SlotKey{}).(*routeinfo.Slot)
	if slot == nil {
		slot = &routeinfo.Slot{}
		ctx = routeinfo.WithSlot(ctx, slot)
	}
	requestID := req.Header.Get(HeaderRequestID)
	if requestID == "" {
		var ok bool
		if requestID, ok = RequestIDFromContext(ctx); !ok {
			requestID = newRequestID()
		}
	}
	parent := trace.SpanContextFromContext(ctx)
	ctx, span := t.tracer.Start(ctx, httpSpanName(req.Method), trace.WithSpanKind(trace.SpanKindClient))
	out := req.Clone(ctx)
	if out.Header == nil {
		out.Header = http.Header{}
	}
	injectCtx := ctx
	if t.sendsParent && parent.IsValid() {
		injectCtx = withParentSpanID(ctx, parent.SpanID())
	}
	t.propagator.Inject(injectCtx, propagation.HeaderCarrier(out.Header))
	out.Header.Set(HeaderRequestID, requestID)
	if t.metaValue != "" {
		out.Header.Set(HeaderPeerMetadataID, t.metaID)
		out.Header.Set(HeaderPeerMetadata, t.metaValue)
	}
	authority := out.Host
	if authority == "" {
		authority = out.URL.Host
	}
	if span.IsRecording() {
		span.SetAttributes(keyHTTPMethod.String(out.Method), keyURLPath.String(out.URL.Path),
			keyURLScheme.String(out.URL.Scheme), keyRequestID.String(requestID))
		if host, port, ok := splitHostPort(authority); ok {
			span.SetAttributes(keyServerAddress.String(host), keyServerPort.Int(port))
		} else if authority != "" {
			span.SetAttributes(keyServerAddress.String(authority))
		}
		span.SetAttributes(t.extraAttrs...)
	}
	var reqBody *countingBody
	if out.Body != nil && out.Body != http.NoBody {
		reqBody = &countingBody{ReadCloser: out.Body}
		out.Body = reqBody
	}

	reqHeaderBytes := httpRequestHeaderBytes(out.Method, out.URL.RequestURI(), authority, out.URL.Scheme, out.Header)
	if _, ok := out.Header["User-Agent"]; !ok {
		reqHeaderBytes += goUserAgentBytes
	}
	if _, ok := out.Header["Content-Length"]; !ok && out.ContentLength > 0 {
		reqHeaderBytes += int64(len("content-length") + len(strconv.FormatInt(out.ContentLength, 10)))
	}
	call := &clientCall{
		reqHeaderBytes: reqHeaderBytes,
		core:           t.core,
		ctx:            ctx,
		span:           span,
		slot:           slot,
		reqB:           reqBody,
		ex: exchange{
			protocol:    protocolHTTP,
			method:      out.Method,
			path:        out.URL.Path,
			authority:   authority,
			start:       start,
			requestID:   requestID,
			spanContext: span.SpanContext(),
		},
	}
	resp, err := t.next.RoundTrip(out)
	if err != nil {
		call.ex.flags = httpErrorFlags(ctx, err)
		call.finish(err)
		return nil, err
	}
	call.ex.httpProtocol = resp.Proto
	call.ex.responseCode = resp.StatusCode
	call.respBytes.Store(httpResponseHeaderBytes(resp.Header))
	call.ex.peer = t.peerFromHeader(resp.Header.Get(HeaderPeerMetadata))
	if resp.TLS != nil {
		call.ex.peerPrincipal = principalOf(resp.TLS)
	}
	if resp.Body == nil || resp.Body == http.NoBody {
		call.finish(nil)
		return resp, nil
	}
	resp.Body = &responseBody{ReadCloser: resp.Body, call: call}
	return resp, nil
}

// httpErrorFlags derives Envoy response flags from a failed round trip.
func httpErrorFlags(ctx context.Context, err error) string {
	switch {
	case errors.Is(err, context.Canceled) || errors.Is(ctx.Err(), context.Canceled):
		return "DC"
	case errors.Is(err, context.DeadlineExceeded) || errors.Is(ctx.Err(), context.DeadlineExceeded):
		return "UT"
	}
	return "UF"
}

// clientCall is one HTTP request on its way back: it records once, when
// the response body ends or is closed, or when the round trip fails.
type clientCall struct {
	*core
	// ctx is the request's own context, kept (as http.Request keeps it)
	// only until the response body ends, to record against it.
	ctx  context.Context
	span trace.Span
	slot *routeinfo.Slot
	reqB *countingBody
	// reqHeaderBytes and respBytes count headers and bodies, as Envoy's
	// request and response sizes do.
	reqHeaderBytes int64
	respBytes      atomic.Int64
	once           sync.Once
	ex             exchange
}

func (c *clientCall) finish(err error) {
	c.once.Do(func() {
		ex := &c.ex
		ex.duration = c.now().Sub(ex.start)
		ex.route = routeInfo(c.ctx, c.slot)
		if ex.route.ResponseFlags != "" {
			ex.flags = ex.route.ResponseFlags
		}
		ex.requestBytes = c.reqHeaderBytes
		if c.reqB != nil {
			ex.requestBytes += c.reqB.n.Load()
		}
		ex.responseBytes = c.respBytes.Load()
		if ex.route.Endpoint != "" {
			ex.remoteAddr = ex.route.Endpoint
		}
		if c.span.IsRecording() {
			if err != nil {
				c.span.RecordError(err)
				c.span.SetStatus(codes.Error, err.Error())
			} else {
				c.span.SetAttributes(keyHTTPStatus.Int(ex.responseCode))
				if ex.responseCode >= 400 {
					c.span.SetStatus(codes.Error, http.StatusText(ex.responseCode))
				}
			}
			setRouteAttributes(c.span, ex.route, ex.flags)
		}
		c.span.End()
		c.record(c.ctx, ex)
	})
}

// responseBody counts the response body and finishes the call at its end.
type responseBody struct {
	io.ReadCloser
	call *clientCall
}

func (b *responseBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.call.respBytes.Add(int64(n))
	if err == io.EOF {
		b.call.finish(nil)
	}
	return n, err
}

func (b *responseBody) Close() error {
	err := b.ReadCloser.Close()
	b.call.finish(nil)
	return err
}

// countingBody counts the bytes read from a request body.
type countingBody struct {
	io.ReadCloser
	n atomic.Int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	return n, err
}

// responseRecorder notes the status and counts the body a handler writes.
// Unwrap lets http.ResponseController reach the writer's other abilities.
type responseRecorder struct {
	http.ResponseWriter
	status      atomic.Int32
	wroteHeader atomic.Bool
	written     atomic.Int64
	flushed     atomic.Bool
	sniffed     atomic.Pointer[string] // the Content-Type net/http will add
}

func (w *responseRecorder) WriteHeader(code int) {
	if code >= 200 && w.wroteHeader.CompareAndSwap(false, true) {
		w.status.Store(int32(code))
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *responseRecorder) Write(p []byte) (int, error) {
	if w.wroteHeader.CompareAndSwap(false, true) {
		w.status.Store(http.StatusOK)
	}
	if len(p) > 0 && w.sniffed.Load() == nil {
		if _, ok := w.Header()["Content-Type"]; !ok {
			// net/http will sniff the same bytes for the header it adds.
			ct := http.DetectContentType(p)
			w.sniffed.CompareAndSwap(nil, &ct)
		}
	}
	n, err := w.ResponseWriter.Write(p)
	w.written.Add(int64(n))
	return n, err
}

// implicitHeaderBytes sizes the headers net/http adds to a response when
// the handler did not set them: Date, Content-Type (sniffed), and
// Content-Length for a short response written at once, or
// Transfer-Encoding otherwise.
func (w *responseRecorder) implicitHeaderBytes() int64 {
	h := w.Header()
	var n int64
	if _, ok := h["Date"]; !ok {
		n += httpDateBytes
	}
	if ct := w.sniffed.Load(); ct != nil {
		n += int64(len("content-type") + len(*ct))
	}
	if _, ok := h["Content-Length"]; !ok && w.status.Load() != http.StatusNoContent && w.status.Load() != http.StatusNotModified {
		if written := w.written.Load(); written < 2048 && !w.flushed.Load() {
			n += int64(len("content-length") + len(strconv.FormatInt(written, 10)))
		} else {
			n += int64(len("transfer-encoding") + len("chunked"))
		}
	}
	return n
}

// Flush keeps streaming handlers working through the wrapper.
func (w *responseRecorder) Flush() {
	w.flushed.Store(true)
	if w.wroteHeader.CompareAndSwap(false, true) {
		w.status.Store(http.StatusOK)
	}
	_ = http.NewResponseController(w.ResponseWriter).Flush()
}

func (w *responseRecorder) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// statusCode is what the client received: 200 when the handler wrote
// nothing, as net/http answers then.
func (w *responseRecorder) statusCode() int {
	if code := w.status.Load(); code != 0 {
		return int(code)
	}
	return http.StatusOK
}

// httpSpanName names HTTP spans by method, as the semantic conventions ask
// when no route template is known; unknown methods share one name, so a
// client cannot blow up span name cardinality.
func httpSpanName(method string) string {
	switch method {
	case "":
		return http.MethodGet
	case http.MethodGet, http.MethodHead, http.MethodPost, http.MethodPut, http.MethodPatch,
		http.MethodDelete, http.MethodConnect, http.MethodOptions, http.MethodTrace:
		return method
	}
	return httpSpanNameOther
}

// protocolVersion turns "HTTP/1.1" into "1.1".
func protocolVersion(proto string) string {
	if len(proto) > 5 && proto[:5] == "HTTP/" {
		return proto[5:]
	}
	return proto
}
