package telemetry_test

import (
	"bufio"
	"bytes"
	"context"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"
	grpccodes "google.golang.org/grpc/codes"
	"google.golang.org/grpc/encoding"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/status"

	"mesh/telemetry"
)

// tcpRelay accepts connections on 127.0.0.1 and relays each to target;
// for every pair, pipe starts the two directions (in goroutines it adds to
// wg). Cleanup closes everything and waits.
type tcpRelay struct {
	lis   net.Listener
	wg    sync.WaitGroup
	mu    sync.Mutex // guards conns, and the taps' counts
	conns []net.Conn
}

func (r *tcpRelay) start(t *testing.T, target string, pipe func(client, server net.Conn, first bool)) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("tap listen: %v", err)
	}
	r.lis = lis
	r.wg.Add(1)
	go func() {
		defer r.wg.Done()
		for first := true; ; first = false {
			client, err := lis.Accept()
			if err != nil {
				return
			}
			server, err := net.Dial("tcp", target)
			if err != nil {
				_ = client.Close()
				continue
			}
			r.mu.Lock()
			r.conns = append(r.conns, client, server)
			r.mu.Unlock()
			r.wg.Add(2)
			pipe(client, server, first)
		}
	}()
	t.Cleanup(func() {
		_ = lis.Close()
		r.mu.Lock()
		for _, c := range r.conns {
			_ = c.Close()
		}
		r.mu.Unlock()
		r.wg.Wait()
	})
}

func (r *tcpRelay) addr() string { return r.lis.Addr().String() }

// wireTap relays TCP connections to a gRPC server and reads the HTTP/2
// frames going each way, to count each stream's bytes as Envoy does: every
// header field's name and value, decoded (uncompressed), and the DATA
// payloads. It is the yardstick the recorded byte metrics are held to.
type wireTap struct {
	tcpRelay
	streams map[uint32]*wireStream
	changed chan struct{} // signalled after every counted frame
}

// wireStream is one stream's count: request (client to server) and
// response, and whether each side ended the stream.
type wireStream struct {
	request, response         int64
	requestEnded, responseEnd bool
}

func startTap(t *testing.T, target string) *wireTap {
	t.Helper()
	w := &wireTap{streams: map[uint32]*wireStream{}, changed: make(chan struct{}, 1)}
	w.start(t, target, func(client, server net.Conn, _ bool) {
		go w.relay(client, server, true)
		go w.relay(server, client, false)
	})
	return w
}

// relay copies src to dst while decoding the frames that pass.
func (w *wireTap) relay(src, dst net.Conn, request bool) {
	defer w.wg.Done()
	defer dst.Close()
	r := io.TeeReader(src, dst)
	if request {
		preface := make([]byte, len(http2.ClientPreface))
		if _, err := io.ReadFull(r, preface); err != nil {
			return
		}
	}
	fr := http2.NewFramer(nil, r)
	fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return // the connection closed, or a frame we cannot read: stop relaying
		}
		var n int64
		var ended bool
		switch f := f.(type) {
		case *http2.MetaHeadersFrame:
			for _, hf := range f.Fields {
				n += int64(len(hf.Name) + len(hf.Value))
			}
			ended = f.StreamEnded()
		case *http2.DataFrame:
			n, ended = int64(len(f.Data())), f.StreamEnded()
		default:
			continue
		}
		id := f.Header().StreamID
		w.mu.Lock()
		s := w.streams[id]
		if s == nil {
			s = &wireStream{}
			w.streams[id] = s
		}
		if request {
			s.request += n
			s.requestEnded = s.requestEnded || ended
		} else {
			s.response += n
			s.responseEnd = s.responseEnd || ended
		}
		w.mu.Unlock()
		select {
		case w.changed <- struct{}{}:
		default:
		}
	}
}

// wait returns the counts of the first n streams once each has ended both
// ways; the frames may still be on their way through the tap when the
// endpoints are done with them.
func (w *wireTap) wait(ctx context.Context, t *testing.T, n int) []wireStream {
	t.Helper()
	for {
		w.mu.Lock()
		var out []wireStream
		for id := uint32(1); len(out) < n; id += 2 { // client streams are odd
			s := w.streams[id]
			if s == nil || !s.requestEnded || !s.responseEnd {
				break
			}
			out = append(out, *s)
		}
		w.mu.Unlock()
		if len(out) == n {
			return out
		}
		select {
		case <-w.changed:
		case <-ctx.Done():
			t.Fatalf("tap: waiting for %d streams to end: %v", n, ctx.Err())
		}
	}
}

// wireTolerance is how far a recorded size may be from the tap's count.
// Neither grpc-go side reports every header it writes (:scheme is assumed
// to be "https"; grpc-accept-encoding and, on servers, headers mesh does
// not read go uncounted), and Envoy's own count is "approximate" too. It
// is far below what counting bodies only misses (hundreds of bytes here).
const wireTolerance = 32

func TestGRPCByteMetricsAreWireBytes(t *testing.T) {
	for _, mode := range []struct {
		name         string
		interceptors bool
	}{{"stats handler", false}, {"interceptors", true}} {
		t.Run(mode.name, func(t *testing.T) {
			// No deadline on the RPCs (a grpc-timeout header's length varies
			// with time); the watchdog only guards against a hang.
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			watchdog := time.AfterFunc(testTimeout, cancel)
			defer watchdog.Stop()
			clientMeter, clientReader := newMeter(t)
			serverMeter, serverReader := newMeter(t)
			p := startPair(t, pairConfig{
				interceptors: mode.interceptors, tap: true,
				clientOpts: []telemetry.GRPCOption{telemetry.WithMeterProvider(clientMeter), telemetry.WithWorkload(checkout)},
				serverOpts: []telemetry.GRPCOption{telemetry.WithMeterProvider(serverMeter), telemetry.WithWorkload(payments)},
			})
			if _, err := p.client.Check(ctx, &healthpb.HealthCheckRequest{Service: "payments"}); err != nil {
				t.Fatalf("check: %v", err)
			}
			if _, err := p.client.Check(ctx, &healthpb.HealthCheckRequest{Service: "missing"}); status.Code(err) != grpccodes.NotFound {
				t.Fatalf("check missing: %v, want NotFound", err)
			}
			watchToEnd(ctx, t, p.client, "watched")
			waitN(ctx, t, "client", p.clientEnds, 3)
			waitN(ctx, t, "server", p.serverEnds, 3)
			wire := p.tap.wait(ctx, t, 3)

			// One series per call: OK, NotFound, and the stream (OK too, so it
			// shares the first series: the histograms hold two values there).
			for _, side := range []struct {
				name   string
				reader *sdkmetric.ManualReader
			}{{"client", clientReader}, {"server", serverReader}} {
				metrics := collect(t, side.reader)
				for _, c := range []struct {
					metric string
					want   func(wireStream) int64
				}{
					{telemetry.MetricRequestBytes, func(s wireStream) int64 { return s.request }},
					{telemetry.MetricResponseBytes, func(s wireStream) int64 { return s.response }},
				} {
					for _, h := range histogram[int64](t, metrics, c.metric) {
						v, _ := h.Attributes.Value("grpc_response_status")
						want := c.want(wire[1]) // NotFound
						if v.AsString() == "0" {
							want = c.want(wire[0]) + c.want(wire[2])
						}
						t.Logf("%s %s (status %s): recorded %d, wire %d", side.name, c.metric, v.AsString(), h.Sum, want)
						if d := h.Sum - want; d < -wireTolerance || d > wireTolerance {
							t.Errorf("%s %s (status %s): sum %d over %d calls, the wire carried %d", side.name, c.metric, v.AsString(), h.Sum, h.Count, want)
						}
					}
				}
				// Messages: Check sends one each way, Watch one each way
				// here; NotFound answers none.
				for _, c := range []struct {
					metric    string
					ok, notOK int64
				}{{telemetry.MetricRequestMessagesTotal, 2, 1}, {telemetry.MetricResponseMessagesTotal, 2, 0}} {
					m, ok := metrics[c.metric]
					if !ok {
						t.Fatalf("%s: no %s", side.name, c.metric)
					}
					for _, pt := range m.Data.(metricdata.Sum[int64]).DataPoints {
						v, _ := pt.Attributes.Value("grpc_response_status")
						want := c.notOK
						if v.AsString() == "0" {
							want = c.ok
						}
						if pt.Value != want {
							t.Errorf("%s %s (status %s) = %d, want %d", side.name, c.metric, v.AsString(), pt.Value, want)
						}
					}
				}
			}
		})
	}
}

// httpTap relays plaintext HTTP/1.1 connections and keeps what passed each
// way, for net/http's own parser to size afterwards.
type httpTap struct {
	tcpRelay
	requests, replies bytes.Buffer // of the first connection only
}

// lockedWriter appends to a buffer of the tap's under its lock.
type lockedWriter struct {
	mu  *sync.Mutex
	buf *bytes.Buffer
}

func (w lockedWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.Write(p)
}

func startHTTPTap(t *testing.T, target string) *httpTap {
	t.Helper()
	tap := &httpTap{}
	tap.start(t, target, func(client, server net.Conn, first bool) {
		reqW, respW := io.Discard, io.Discard
		if first {
			reqW, respW = lockedWriter{&tap.mu, &tap.requests}, lockedWriter{&tap.mu, &tap.replies}
		}
		go func() { defer tap.wg.Done(); defer server.Close(); _, _ = io.Copy(server, io.TeeReader(client, reqW)) }()
		go func() { defer tap.wg.Done(); defer client.Close(); _, _ = io.Copy(client, io.TeeReader(server, respW)) }()
	})
	return tap
}

// exchanges parses what the first connection carried: for each request,
// its size and its response's, as Envoy counts them (header names and
// values with the request line as pseudo headers, plus the body).
func (tap *httpTap) exchanges(t *testing.T) (requests, responses []int64) {
	t.Helper()
	tap.mu.Lock()
	reqs := bufio.NewReader(bytes.NewReader(bytes.Clone(tap.requests.Bytes())))
	resps := bufio.NewReader(bytes.NewReader(bytes.Clone(tap.replies.Bytes())))
	tap.mu.Unlock()
	headerSize := func(h http.Header) (n int64) {
		for k, vs := range h {
			for _, v := range vs {
				n += int64(len(k) + len(v))
			}
		}
		return n
	}
	for {
		req, err := http.ReadRequest(reqs)
		if err != nil {
			return requests, responses
		}
		body, err := io.ReadAll(req.Body)
		if err != nil {
			t.Fatalf("tap: request body: %v", err)
		}
		requests = append(requests, int64(len(":method")+len(req.Method)+len(":path")+len(req.RequestURI)+
			len(":authority")+len(req.Host)+len(":scheme")+len("http")+len(body))+headerSize(req.Header))
		resp, err := http.ReadResponse(resps, req)
		if err != nil {
			t.Fatalf("tap: response: %v", err)
		}
		body, err = io.ReadAll(resp.Body)
		if err != nil {
			t.Fatalf("tap: response body: %v", err)
		}
		responses = append(responses, int64(len(":status")+3+len(body))+headerSize(resp.Header))
	}
}

// countingCodec is a caller's own codec: proto's, counting its uses.
type countingCodec struct {
	encoding.CodecV2
	name string // "" for proto's
	uses atomic.Int32
}

func (c *countingCodec) Name() string {
	if c.name != "" {
		return c.name
	}
	return c.CodecV2.Name()
}

// subtypeCodec is registered for content subtype "meshtest", as codecs
// are, at init.
var subtypeCodec = &countingCodec{CodecV2: encoding.GetCodecV2("proto"), name: "meshtest"}

func init() { encoding.RegisterCodecV2(subtypeCodec) }

func (c *countingCodec) Marshal(v any) (mem.BufferSlice, error) {
	c.uses.Add(1)
	return c.CodecV2.Marshal(v)
}

func (c *countingCodec) Unmarshal(data mem.BufferSlice, v any) error {
	c.uses.Add(1)
	return c.CodecV2.Unmarshal(data, v)
}

// TestGRPCClientKeepsTheCallersCodec: the client interceptor sizes a unary
// call's messages with a codec of its own only where the call would use
// grpc-go's default, and then sends what grpc-go sends; a codec or content
// subtype the caller chose is kept. The sizes recorded are the wire's
// either way.
func TestGRPCClientKeepsTheCallersCodec(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	watchdog := time.AfterFunc(testTimeout, cancel)
	defer watchdog.Stop()
	meter, reader := newMeter(t)
	p := startPair(t, pairConfig{
		interceptors: true, tap: true,
		clientOpts: []telemetry.GRPCOption{telemetry.WithMeterProvider(meter), telemetry.WithWorkload(checkout)},
		serverOpts: []telemetry.GRPCOption{telemetry.WithWorkload(payments)},
	})
	counting := &countingCodec{CodecV2: encoding.GetCodecV2("proto")}
	calls := []struct {
		name        string
		opts        []grpc.CallOption
		contentType string
		codec       *countingCodec // the caller's, used once each way
	}{
		{"default codec", nil, "application/grpc", nil},
		{"the caller's codec", []grpc.CallOption{grpc.ForceCodecV2(counting)}, "application/grpc+proto", counting},
		{"the caller's content subtype", []grpc.CallOption{grpc.CallContentSubtype("meshtest")}, "application/grpc+meshtest", subtypeCodec},
	}
	for _, c := range calls {
		before := counting.uses.Load() + subtypeCodec.uses.Load()
		if _, err := p.client.Check(ctx, &healthpb.HealthCheckRequest{Service: "payments"}, c.opts...); err != nil {
			t.Fatalf("%s: check: %v", c.name, err)
		}
		seen := <-p.service.seen
		if seen.contentType != c.contentType {
			t.Errorf("%s: the server saw content-type %q, want %q", c.name, seen.contentType, c.contentType)
		}
		want := int32(0)
		if c.codec != nil {
			// The server, in this process, decodes and encodes with the
			// subtype's codec too.
			want = 2
			if c.codec == subtypeCodec {
				want = 4
			}
		}
		if got := counting.uses.Load() + subtypeCodec.uses.Load() - before; got != want {
			t.Errorf("%s: the caller's codecs were used %d times, want %d", c.name, got, want)
		}
	}
	waitN(ctx, t, "client", p.clientEnds, len(calls))
	wire := p.tap.wait(ctx, t, len(calls))
	metrics := collect(t, reader)
	for _, c := range []struct {
		metric string
		want   func(wireStream) int64
	}{
		{telemetry.MetricRequestBytes, func(s wireStream) int64 { return s.request }},
		{telemetry.MetricResponseBytes, func(s wireStream) int64 { return s.response }},
	} {
		var want int64
		for _, s := range wire {
			want += c.want(s)
		}
		h := histogram[int64](t, metrics, c.metric)
		if len(h) != 1 || h[0].Count != uint64(len(calls)) {
			t.Fatalf("%s: %d series, want one of %d calls", c.metric, len(h), len(calls))
		}
		t.Logf("%s: recorded %d, wire %d", c.metric, h[0].Sum, want)
		if d := h[0].Sum - want; d < -wireTolerance*int64(len(calls)) || d > wireTolerance*int64(len(calls)) {
			t.Errorf("%s: sum %d over %d calls, the wire carried %d", c.metric, h[0].Sum, len(calls), want)
		}
	}
}
