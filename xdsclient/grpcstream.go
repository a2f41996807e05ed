package xdsclient

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"golang.org/x/net/http2"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"mesh/internal/grpchttp"
	"mesh/xdsclient/internal/lite"
)

// The ADS stream is gRPC over HTTP/2 spoken directly on an x/net/http2
// client connection rather than through a grpc.ClientConn: a stream then
// costs the connection's read loop and the request body's writer, where a
// second grpc-go channel cost seven goroutines (three callback
// serializers, a reader, a writer, a stream watcher) for a single stream.
// It speaks only what ADS needs: one long-lived bidirectional stream per
// connection, uncompressed messages, status from trailers.

const (
	sotwMethod  = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources"
	deltaMethod = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"
	// maxRecvMsgSize is grpc-go's default limit, which the ADS channel
	// had while it was a grpc.ClientConn.
	maxRecvMsgSize = 4 << 20
	// connectTimeout bounds a dial and handshake, as grpc-go's minimum
	// connect timeout did.
	connectTimeout = 20 * time.Second
)

// adsStream is what the ADS protocol code needs of a stream, state of the
// world or delta alike.
type adsStream[Req lite.Encoder, Resp lite.Message] interface {
	Send(Req) error
	Recv() (Resp, error)
	CloseSend() error
	Context() context.Context
}

// adsServer is how to reach one xDS server: where, and with which
// channel and call credentials.
type adsServer struct {
	uri       string // as the bootstrap gave it, for errors
	network   string // "tcp" or "unix"
	addr      string
	authority string // :authority
	host      string // TLS server name
	creds     serverCreds
	h2        *http2.Transport
}

// newADSServer parses s's server_uri the way grpc-go resolves a target:
// "dns:///host:port", "passthrough:///addr", "unix:path", "unix:///path",
// "unix-abstract:name", or a bare host:port (port 443 if none).
func newADSServer(s ServerConfig, creds serverCreds) (*adsServer, error) {
	srv := &adsServer{
		uri:     s.URI,
		network: "tcp",
		creds:   creds,
		// Compression off: no accept-encoding is sent, and no message is
		// expected compressed. The connections are dialed here
		// (dialContext), so AllowHTTP only lets a plaintext request through.
		h2: &http2.Transport{AllowHTTP: true, DisableCompression: true},
	}
	uri := s.URI
	endpoint := ""
	switch {
	case strings.HasPrefix(uri, "unix-abstract:"):
		name := strings.TrimPrefix(strings.TrimPrefix(uri, "unix-abstract:"), "//")
		srv.network, srv.addr, srv.authority = "unix", "@"+strings.TrimPrefix(name, "/"), "localhost"
	case strings.HasPrefix(uri, "unix:"):
		path := strings.TrimPrefix(uri, "unix:")
		if rest, ok := strings.CutPrefix(path, "//"); ok {
			if !strings.HasPrefix(rest, "/") {
				return nil, fmt.Errorf("xds: server_uri %q: a unix target names no host (unix:///path or unix:path)", uri)
			}
			path = rest
		}
		if path == "" {
			return nil, fmt.Errorf("xds: server_uri %q: no socket path", uri)
		}
		srv.network, srv.addr, srv.authority = "unix", path, "localhost"
	case strings.HasPrefix(uri, "dns:"), strings.HasPrefix(uri, "passthrough:"):
		_, rest, _ := strings.Cut(uri, ":")
		if r, ok := strings.CutPrefix(rest, "//"); ok {
			// The authority (a DNS server to ask) is not supported: the
			// system resolver is used.
			auth, ep, _ := strings.Cut(r, "/")
			if auth != "" {
				return nil, fmt.Errorf("xds: server_uri %q: a DNS server in the target is not supported", uri)
			}
			rest = ep
		}
		endpoint = rest
	default:
		endpoint = uri
	}
	if srv.network == "tcp" {
		if endpoint == "" {
			return nil, fmt.Errorf("xds: server_uri %q: no host", uri)
		}
		host, port, err := net.SplitHostPort(endpoint)
		if err != nil {
			// grpc-go's default port.
			host, port = strings.Trim(endpoint, "[]"), "443"
			endpoint = net.JoinHostPort(host, port)
		}
		if host == "" {
			return nil, fmt.Errorf("xds: server_uri %q: no host", uri)
		}
		srv.addr, srv.authority, srv.host = endpoint, endpoint, host
	} else {
		srv.host = srv.authority
	}
	return srv, nil
}

// dial opens an HTTP/2 connection to the server: TLS with ALPN h2 when
// the channel creds say tls, h2c (prior knowledge) when insecure.
func (s *adsServer) dial(ctx context.Context) (*http2.ClientConn, error) {
	ctx, cancel := context.WithTimeout(ctx, connectTimeout)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, s.network, s.addr)
	if err != nil {
		return nil, status.Errorf(codes.Unavailable, "xds: connecting to %s: %v", s.uri, err)
	}
	if s.creds.tls != nil {
		base, err := s.creds.tls.current()
		if err != nil {
			conn.Close()
			return nil, status.Errorf(codes.Unavailable, "xds: connecting to %s: %v", s.uri, err)
		}
		cfg := base.Clone()
		cfg.ServerName, cfg.NextProtos = s.host, []string{http2.NextProtoTLS}
		tc := tls.Client(conn, cfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			conn.Close()
			return nil, status.Errorf(codes.Unavailable, "xds: TLS handshake with %s: %v", s.uri, err)
		}
		if p := tc.ConnectionState().NegotiatedProtocol; p != http2.NextProtoTLS {
			tc.Close()
			return nil, status.Errorf(codes.Unavailable, "xds: %s did not negotiate HTTP/2 (ALPN %q)", s.uri, p)
		}
		conn = tc
	}
	cc, err := s.h2.NewClientConn(conn)
	if err != nil {
		conn.Close()
		return nil, status.Errorf(codes.Unavailable, "xds: HTTP/2 with %s: %v", s.uri, err)
	}
	return cc, nil
}

// ready reports whether a connection to the server can be made now and
// answers an HTTP/2 ping: what grpc-go's READY meant for gRFC A71.
func (s *adsServer) ready(ctx context.Context) bool {
	cc, err := s.dial(ctx)
	if err != nil {
		return false
	}
	defer cc.Close()
	return cc.Ping(ctx) == nil
}

// grpcStream is one gRPC bidirectional stream on a connection of its
// own. Send and CloseSend may be called from one goroutine at a time, Recv
// from another.
type grpcStream[Req lite.Encoder, Resp lite.Message] struct {
	ctx     context.Context
	cancel  context.CancelFunc
	srv     *adsServer
	conn    *http2.ClientConn
	req     *http.Request
	pw      *io.PipeWriter // the request body: messages sent
	pr      *io.PipeReader
	newResp func() Resp
	stop    func() bool // stops the AfterFunc that aborts on cancel

	// Only Recv touches these.
	resp  *http.Response
	ended error // set once the stream has ended
	hdr   [5]byte
}

// openStream dials srv and prepares a stream calling method on it. The
// request goes out on the first Recv: the HTTP/2 round trip returns only
// with the response headers, which a server may send only after the
// first request; Send meanwhile waits for the body to be read.
func openStream[Req lite.Encoder, Resp lite.Message](ctx context.Context, srv *adsServer, method string, newResp func() Resp) (*grpcStream[Req, Resp], error) {
	var auth []string
	for _, tc := range srv.creds.tokens {
		if srv.creds.tls == nil {
			// Bootstrap parsing refuses this already; fail closed anyway.
			return nil, status.Errorf(codes.Unauthenticated, "xds: %s: refusing to send a token over plaintext", srv.uri)
		}
		v, err := tc.authorization()
		if err != nil {
			return nil, status.Errorf(codes.Unavailable, "xds: %s: %v", srv.uri, err)
		}
		auth = append(auth, v)
	}
	conn, err := srv.dial(ctx)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	pr, pw := io.Pipe()
	scheme := "http"
	if srv.creds.tls != nil {
		scheme = "https"
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, scheme+"://"+srv.authority+method, pr)
	if err != nil {
		cancel()
		conn.Close()
		return nil, status.Errorf(codes.Internal, "xds: %s: %v", srv.uri, err)
	}
	req.Host = srv.authority
	req.ContentLength = -1
	req.Header = http.Header{
		"Content-Type": {"application/grpc+proto"},
		"Te":           {"trailers"},
		"User-Agent":   {"mesh-xdsclient"},
	}
	if len(auth) > 0 {
		req.Header["Authorization"] = auth
	}
	s := &grpcStream[Req, Resp]{ctx: ctx, cancel: cancel, srv: srv, conn: conn, req: req, pw: pw, pr: pr, newResp: newResp}
	// The HTTP/2 client does not watch the request's context while it
	// waits on the request body, so a cancelled stream would block Recv:
	// cancelling closes the connection, which ends every read and write.
	s.stop = context.AfterFunc(ctx, s.abort)
	return s, nil
}

func (s *grpcStream[Req, Resp]) Context() context.Context { return s.ctx }

// Send writes m as one uncompressed gRPC message. An error means the
// stream is over; Recv tells why.
func (s *grpcStream[Req, Resp]) Send(m Req) error {
	// The server enforces its own size limit, with a status saying so.
	buf, err := m.AppendTo(make([]byte, 5, 512))
	if err != nil {
		return status.Errorf(codes.Internal, "xds: marshaling the request: %v", err)
	}
	binary.BigEndian.PutUint32(buf[1:], uint32(len(buf)-5))
	if _, err := s.pw.Write(buf); err != nil {
		return fmt.Errorf("xds: the stream to %s is closed: %w", s.srv.uri, io.EOF)
	}
	return nil
}

// CloseSend ends the request side (END_STREAM after the last message).
func (s *grpcStream[Req, Resp]) CloseSend() error { return s.pw.Close() }

// Recv returns the next message, or the stream's status as an error:
// io.EOF for OK, a status error otherwise.
func (s *grpcStream[Req, Resp]) Recv() (Resp, error) {
	var zero Resp
	if s.ended != nil {
		return zero, s.ended
	}
	var err error
	if s.resp == nil {
		err = s.start()
	}
	if err == nil {
		var m Resp
		if m, err = s.recv(); err == nil {
			return m, nil
		}
	}
	s.ended = err
	// Sends from now on fail, whether or not the HTTP/2 client has
	// stopped reading the request body yet.
	s.pw.CloseWithError(errStreamClosed)
	return zero, err
}

// start sends the request and reads the response headers.
func (s *grpcStream[Req, Resp]) start() error {
	resp, err := s.conn.RoundTrip(s.req)
	if err != nil {
		s.pr.CloseWithError(err)
		return s.transportError(err)
	}
	s.resp = resp
	if resp.Header.Get("Grpc-Status") != "" {
		// Trailers-only: the status came with the headers.
		return s.statusError(resp.Header)
	}
	if resp.StatusCode != http.StatusOK {
		return status.Errorf(grpchttp.CodeFromHTTPStatus(resp.StatusCode), "xds: %s answered HTTP status %d", s.srv.uri, resp.StatusCode)
	}
	if ct := resp.Header.Get("Content-Type"); ct != "application/grpc" && !strings.HasPrefix(ct, "application/grpc+") && !strings.HasPrefix(ct, "application/grpc;") {
		return status.Errorf(codes.Unknown, "xds: %s answered content-type %q, not gRPC", s.srv.uri, ct)
	}
	return nil
}

func (s *grpcStream[Req, Resp]) recv() (Resp, error) {
	var zero Resp
	body := s.resp.Body
	if _, err := io.ReadFull(body, s.hdr[:]); err != nil {
		if err == io.EOF {
			return zero, s.statusError(s.resp.Trailer)
		}
		return zero, s.transportError(err)
	}
	switch s.hdr[0] {
	case 0:
	case 1:
		return zero, status.Errorf(codes.Internal, "xds: %s sent a compressed message (grpc-encoding %q), but none was offered: refused",
			s.srv.uri, s.resp.Header.Get("Grpc-Encoding"))
	default:
		return zero, status.Errorf(codes.Internal, "xds: %s sent a message with flags %#x", s.srv.uri, s.hdr[0])
	}
	n := binary.BigEndian.Uint32(s.hdr[1:])
	if n > maxRecvMsgSize {
		return zero, status.Errorf(codes.ResourceExhausted, "xds: %s sent a message of %d bytes, larger than %d", s.srv.uri, n, maxRecvMsgSize)
	}
	buf := make([]byte, n)
	if _, err := io.ReadFull(body, buf); err != nil {
		if err == io.EOF || err == io.ErrUnexpectedEOF {
			return zero, status.Errorf(codes.Internal, "xds: %s ended the stream inside a message", s.srv.uri)
		}
		return zero, s.transportError(err)
	}
	m := s.newResp()
	if err := lite.Unmarshal(buf, m); err != nil {
		return zero, status.Errorf(codes.Internal, "xds: %s sent a message that does not parse: %v", s.srv.uri, err)
	}
	return m, nil
}

// statusError is the stream's status from trailers (or the headers of a
// trailers-only response): io.EOF for OK.
func (s *grpcStream[Req, Resp]) statusError(h http.Header) error {
	raw := h.Get("Grpc-Status")
	if raw == "" {
		return status.Errorf(codes.Internal, "xds: %s ended the stream without a grpc-status", s.srv.uri)
	}
	code, err := strconv.ParseUint(raw, 10, 32)
	if err != nil {
		return status.Errorf(codes.Internal, "xds: %s sent grpc-status %q", s.srv.uri, raw)
	}
	if code == 0 {
		return io.EOF
	}
	msg := h.Get("Grpc-Message")
	if m, err := url.PathUnescape(msg); err == nil {
		msg = m // percent-encoded, by the gRPC spec
	}
	return status.Error(codes.Code(code), msg)
}

// transportError maps an HTTP/2 error to the status gRPC gives it.
func (s *grpcStream[Req, Resp]) transportError(err error) error {
	if cerr := s.ctx.Err(); cerr != nil {
		return status.FromContextError(cerr).Err()
	}
	var se http2.StreamError
	if errors.As(err, &se) {
		code := codes.Internal
		switch se.Code {
		case http2.ErrCodeRefusedStream:
			code = codes.Unavailable
		case http2.ErrCodeCancel:
			code = codes.Canceled
		case http2.ErrCodeEnhanceYourCalm:
			code = codes.ResourceExhausted
		case http2.ErrCodeInadequateSecurity:
			code = codes.PermissionDenied
		}
		return status.Errorf(code, "xds: %s reset the stream: %v", s.srv.uri, se.Code)
	}
	var ga http2.GoAwayError
	if errors.As(err, &ga) {
		return status.Errorf(codes.Unavailable, "xds: %s sent GOAWAY (%v %q)", s.srv.uri, ga.ErrCode, ga.DebugData)
	}
	return status.Errorf(codes.Unavailable, "xds: connection to %s: %v", s.srv.uri, err)
}

// close ends the stream and its connection. The connection's read loop
// and the request body's writer exit once the connection is closed.
func (s *grpcStream[Req, Resp]) close() {
	s.stop()
	s.cancel()
	s.abort()
}

// abort closes the request body and the connection; safe to repeat and
// to call while Send and Recv run.
func (s *grpcStream[Req, Resp]) abort() {
	s.pw.CloseWithError(errStreamClosed)
	s.conn.Close()
}

var errStreamClosed = errors.New("xds: stream closed")
