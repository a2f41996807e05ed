package drain

import (
	"bytes"
	"net"
	"testing"

	"golang.org/x/net/http2"
)

// recordingConn keeps what was written, in the order of the writes.
type recordingConn struct {
	net.Conn
	buf bytes.Buffer
}

func (c *recordingConn) Write(p []byte) (int, error) { return c.buf.Write(p) }

// serverFrames is what an HTTP/2 server might write: SETTINGS, then
// HEADERS and DATA on two streams, as written by golang.org/x/net/http2.
func serverFrames(t *testing.T) []byte {
	t.Helper()
	var b bytes.Buffer
	fr := http2.NewFramer(&b, nil)
	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	must(fr.WriteSettings())
	must(fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: []byte("hdrs"), EndHeaders: true}))
	must(fr.WriteData(1, false, bytes.Repeat([]byte("d"), 300)))
	must(fr.WriteData(3, true, nil))
	must(fr.WriteData(1, true, []byte("end")))
	return b.Bytes()
}

// TestGoAwayLandsBetweenFrames writes the server's frames in chunks of
// every size from 1 byte up, asking for GOAWAY after every chunk index, and
// checks with a real HTTP/2 framer that the stream holds every frame of
// the server's intact, in order, with one GOAWAY after SETTINGS.
func TestGoAwayLandsBetweenFrames(t *testing.T) {
	frames := serverFrames(t)
	for chunk := 1; chunk <= 40; chunk++ {
		for at := 0; at*chunk <= len(frames); at++ {
			rec := &recordingConn{}
			c := NewConn(rec, HTTP2)
			for i := 0; i < len(frames); i += chunk {
				if i/chunk == at {
					if !c.GoAway() {
						t.Fatal("GoAway reported a non-HTTP/2 connection")
					}
				}
				if _, err := c.Write(frames[i:min(i+chunk, len(frames))]); err != nil {
					t.Fatal(err)
				}
			}
			if at*chunk >= len(frames) {
				c.GoAway() // after everything: at once
			}
			checkStream(t, rec.buf.Bytes(), chunk, at)
		}
	}
}

func checkStream(t *testing.T, stream []byte, chunk, at int) {
	t.Helper()
	fr := http2.NewFramer(nil, bytes.NewReader(stream))
	var kinds []http2.FrameType
	goaways := 0
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			break
		}
		if ga, ok := f.(*http2.GoAwayFrame); ok {
			goaways++
			if ga.ErrCode != http2.ErrCodeNo || ga.LastStreamID != 1<<31-1 {
				t.Fatalf("chunk %d at %d: GOAWAY %v last stream %d", chunk, at, ga.ErrCode, ga.LastStreamID)
			}
			if len(kinds) == 0 {
				t.Fatalf("chunk %d at %d: GOAWAY before the server's SETTINGS", chunk, at)
			}
			continue
		}
		kinds = append(kinds, f.Header().Type)
	}
	want := []http2.FrameType{http2.FrameSettings, http2.FrameHeaders, http2.FrameData, http2.FrameData, http2.FrameData}
	if len(kinds) != len(want) || goaways != 1 {
		t.Fatalf("chunk %d at %d: frames %v and %d GOAWAYs, want %v and one", chunk, at, kinds, goaways, want)
	}
}

func TestHTTP1HasNoGoAway(t *testing.T) {
	rec := &recordingConn{}
	c := NewConn(rec, Detect)
	if c.GoAway() {
		t.Fatal("GoAway before the protocol is known")
	}
	c.proto.Store(int32(HTTP1))
	if c.GoAway() {
		t.Fatal("GoAway on HTTP/1")
	}
	c.Write([]byte("HTTP/1.1 200 OK\r\n\r\n"))
	if rec.buf.String() != "HTTP/1.1 200 OK\r\n\r\n" {
		t.Fatalf("wrote %q", rec.buf.String())
	}
}
