package mesh_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"testing"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/emptypb"

	"mesh/internal/shop"
	"mesh/internal/testutil"
)

// The windows mesh's gRPC clients and servers announce: fixed, as Envoy's
// are, so neither end pings the other every round trip to estimate them.
const (
	wantStreamWindow = 4 << 20
	wantConnWindow   = 16 << 20
)

// h2Peer is one end of a raw HTTP/2 connection to a grpc-go transport: it
// sees every frame the other end sends, as the other end wrote it.
type h2Peer struct {
	conn net.Conn
	fr   *http2.Framer
	henc *hpack.Encoder
	hbuf bytes.Buffer
}

func newH2Peer(conn net.Conn) *h2Peer {
	p := &h2Peer{conn: conn, fr: http2.NewFramer(conn, conn)}
	p.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	p.henc = hpack.NewEncoder(&p.hbuf)
	return p
}

func (p *h2Peer) headers(stream uint32, end bool, kv ...string) error {
	p.hbuf.Reset()
	for i := 0; i+1 < len(kv); i += 2 {
		p.henc.WriteField(hpack.HeaderField{Name: kv[i], Value: kv[i+1]})
	}
	return p.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: stream, BlockFragment: p.hbuf.Bytes(), EndHeaders: true, EndStream: end})
}

// h2Client opens a plaintext HTTP/2 connection (prior knowledge) to addr,
// which the test closes at its end, and returns it with the server's
// first SETTINGS, acked.
func h2Client(ctx context.Context, t *testing.T, addr net.Addr) (*h2Peer, map[http2.SettingID]uint32) {
	t.Helper()
	conn := dial(ctx, t, addr)
	t.Cleanup(func() { conn.Close() })
	if _, err := io.WriteString(conn, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	p := newH2Peer(conn)
	if err := p.fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	settings, err := p.settings()
	if err != nil {
		t.Fatalf("%s: %v", addr, err)
	}
	return p, settings
}

// emptyMessage is a gRPC length-prefixed message of zero bytes.
var emptyMessage = []byte{0, 0, 0, 0, 0}

// settings reads frames up to the other end's first SETTINGS, acks it
// and returns its values.
func (p *h2Peer) settings() (map[http2.SettingID]uint32, error) {
	for {
		f, err := p.fr.ReadFrame()
		if err != nil {
			return nil, fmt.Errorf("no SETTINGS: %w", err)
		}
		sf, ok := f.(*http2.SettingsFrame)
		if !ok || sf.IsAck() {
			continue
		}
		out := map[http2.SettingID]uint32{}
		sf.ForeachSetting(func(s http2.Setting) error {
			out[s.ID] = s.Val
			return nil
		})
		return out, p.fr.WriteSettingsAck()
	}
}

// until reads frames until done says a frame is the one awaited. A PING
// from the other end (not an ack) is an error: grpc-go sends one to
// estimate the windows it grows. It returns the connection window the
// other end granted by then, beyond HTTP/2's initial 65,535 bytes.
func (p *h2Peer) until(what string, done func(http2.Frame) bool) (connGrant uint32, err error) {
	for {
		f, err := p.fr.ReadFrame()
		if err != nil {
			return connGrant, fmt.Errorf("waiting for %s: %w", what, err)
		}
		switch f := f.(type) {
		case *http2.PingFrame:
			if !f.IsAck() {
				return connGrant, fmt.Errorf("waiting for %s: the other end sent a PING %x, to estimate its windows", what, f.Data)
			}
		case *http2.WindowUpdateFrame:
			if f.StreamID == 0 {
				connGrant += f.Increment
			}
		case *http2.SettingsFrame:
			if !f.IsAck() {
				p.fr.WriteSettingsAck()
			}
		}
		if done(f) {
			return connGrant, nil
		}
	}
}

func checkWindows(t *testing.T, who string, settings map[http2.SettingID]uint32, connGrant uint32) {
	t.Helper()
	if got := settings[http2.SettingInitialWindowSize]; got != wantStreamWindow {
		t.Errorf("%s: SETTINGS_INITIAL_WINDOW_SIZE %d, want %d", who, got, wantStreamWindow)
	}
	if got := connGrant + 65535; got != wantConnWindow {
		t.Errorf("%s: connection window %d, want %d", who, got, wantConnWindow)
	}
}

// TestGRPCServerWindowsAreFixed: a mesh gRPC server announces fixed
// windows and does not ping a client whose calls send it data.
func TestGRPCServerWindowsAreFixed(t *testing.T) {
	ctx := testutil.Context(t)
	s := startSite(ctx, t, nil, nil, areas())
	addr := shop.ServeGRPC(t, s.m.NewGRPCServer(grpc.UnknownServiceHandler(func(_ any, stream grpc.ServerStream) error {
		if err := stream.RecvMsg(&emptypb.Empty{}); err != nil {
			return err
		}
		return stream.SendMsg(&emptypb.Empty{})
	})))
	p, settings := h2Client(ctx, t, addr) // PERMISSIVE: plaintext is served
	var grant uint32
	// Calls one after another: grpc-go's estimation pings on the first
	// data of a connection and again on data after each ack.
	for i := range 3 {
		id := uint32(2*i + 1)
		err := p.headers(id, false, ":method", "POST", ":scheme", "http", ":path", "/any.Service/Call",
			":authority", "web.default.svc.cluster.local:8080", "content-type", "application/grpc", "te", "trailers")
		if err == nil {
			err = p.fr.WriteData(id, true, emptyMessage)
		}
		if err != nil {
			t.Fatal(err)
		}
		var status string
		n, err := p.until("the call's trailers", func(f http2.Frame) bool {
			h, ok := f.(*http2.MetaHeadersFrame)
			if ok && h.StreamID == id && h.StreamEnded() {
				status = findField(h, "grpc-status")
				return true
			}
			return false
		})
		if err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
		if status != "0" {
			t.Fatalf("call %d ended with grpc-status %q", i, status)
		}
		grant += n
	}
	checkWindows(t, "mesh gRPC server", settings, grant)
}

// TestGRPCClientWindowsAreFixed: a channel with the mesh's dial options
// announces fixed windows and does not ping a server that answers it.
func TestGRPCClientWindowsAreFixed(t *testing.T) {
	ctx := testutil.Context(t)
	s := startSite(ctx, t, nil, nil, areas())
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	served := make(chan result, 1)
	const calls = 3
	go func() {
		defer close(served)
		conn, err := lis.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		if dl, ok := ctx.Deadline(); ok {
			conn.SetDeadline(dl) // hang guard only
		}
		preface := make([]byte, len(http2.ClientPreface))
		if _, err := io.ReadFull(conn, preface); err != nil || string(preface) != http2.ClientPreface {
			t.Errorf("no HTTP/2 preface: %q, %v", preface, err)
			return
		}
		p := newH2Peer(conn)
		r, err := answer(p, calls)
		if err != nil {
			t.Error(err)
			return
		}
		served <- r
	}()

	conn, err := grpc.NewClient("passthrough:///"+lis.Addr().String(), s.m.DialOptions()...)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	for i := range calls {
		if err := conn.Invoke(ctx, "/any.Service/Call", &emptypb.Empty{}, &emptypb.Empty{}); err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
	}
	r, ok := <-served
	if !ok {
		t.Fatal("the raw server stopped early")
	}
	checkWindows(t, "mesh gRPC client", r.settings, r.grant)
}

// answer plays a gRPC server to calls unary calls, one after another,
// and returns the client's SETTINGS and the connection window it granted.
func answer(p *h2Peer, calls int) (result, error) {
	var r result
	if err := p.fr.WriteSettings(); err != nil {
		return r, err
	}
	var err error
	if r.settings, err = p.settings(); err != nil {
		return r, err
	}
	for i := range calls {
		var id uint32
		n, err := p.until("a request's end", func(f http2.Frame) bool {
			if d, ok := f.(*http2.DataFrame); ok && d.StreamEnded() {
				id = d.StreamID
				return true
			}
			return false
		})
		if err != nil {
			return r, fmt.Errorf("call %d: %w", i, err)
		}
		r.grant += n
		// The answer's data reaches the client's estimator, when it has one.
		err = p.headers(id, false, ":status", "200", "content-type", "application/grpc")
		if err == nil {
			err = p.fr.WriteData(id, false, emptyMessage)
		}
		if err == nil {
			err = p.headers(id, true, "grpc-status", "0")
		}
		if err != nil {
			return r, err
		}
	}
	return r, nil
}

// result is what answer saw of a client.
type result struct {
	settings map[http2.SettingID]uint32
	grant    uint32
}

func findField(h *http2.MetaHeadersFrame, name string) string {
	for _, f := range h.RegularFields() {
		if f.Name == name {
			return f.Value
		}
	}
	return ""
}
