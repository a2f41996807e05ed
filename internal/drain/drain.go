// Package drain lets a server tell an HTTP/2 client to go away on a
// connection whose HTTP/2 server (grpc-go's, net/http's) offers no way to
// drain that one connection: Conn watches the frames the server writes and
// slips a GOAWAY in between two of them.
//
//	c := drain.NewConn(secured, drain.HTTP2)
//	// ... the HTTP/2 server reads and writes c ...
//	c.GoAway() // the client opens no new streams here and reconnects
package drain

import (
	"encoding/binary"
	"net"
	"sync"
	"sync/atomic"
)

// Protocol is what a Conn carries.
type Protocol int

const (
	// Detect decides from the client's first bytes: HTTP/2 with prior
	// knowledge starts with "PRI", anything else is HTTP/1.
	Detect Protocol = iota
	// HTTP2 is a connection known to carry HTTP/2 (gRPC).
	HTTP2
	// HTTP1 is a connection carrying HTTP/1, where there is no GOAWAY.
	HTTP1
)

const frameHeaderLen = 9

// Conn is a server connection whose writes are tracked frame by frame, so
// that GoAway can add a frame without splitting one of the server's.
type Conn struct {
	net.Conn

	// proto is read without mu: a reader must never wait for a blocked
	// write, or both ends of a full connection could wait on each other.
	proto atomic.Int32
	first []byte // first bytes read, while proto is Detect; reader only

	mu       sync.Mutex // held across writes to Conn, so frames never interleave
	hdr      [frameHeaderLen]byte
	hdrN     int  // bytes of the current frame header written
	left     int  // payload bytes of the current frame still to write
	started  bool // a frame was written: the server's SETTINGS must come first
	pending  bool
	sentAway bool
}

// NewConn wraps a server connection, after its TLS if any.
func NewConn(c net.Conn, p Protocol) *Conn {
	dc := &Conn{Conn: c}
	dc.proto.Store(int32(p))
	return dc
}

// Read reads from the connection, learning its protocol from the first
// bytes when it was not known.
func (c *Conn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 && Protocol(c.proto.Load()) == Detect {
		c.first = append(c.first, p[:min(n, 3-len(c.first))]...)
		if len(c.first) == 3 {
			proto := HTTP1
			if string(c.first) == "PRI" {
				proto = HTTP2
			}
			c.proto.Store(int32(proto))
			c.first = nil
		}
	}
	return n, err
}

// Write writes p, adding a pending GOAWAY at the first frame boundary.
func (c *Conn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if Protocol(c.proto.Load()) != HTTP2 {
		return c.Conn.Write(p)
	}
	written := 0
	for len(p) > 0 {
		n := c.frameSpan(p)
		if !c.pending {
			n = len(p) // nothing to add: write it all, tracking as we go
		}
		m, err := c.Conn.Write(p[:n])
		c.track(p[:m])
		written += m
		if err != nil {
			return written, err
		}
		p = p[m:]
		if c.pending && c.atBoundary() {
			if err := c.writeGoAwayLocked(); err != nil {
				return written, err
			}
		}
	}
	return written, nil
}

// frameSpan is how many bytes of p end the current frame (or all of p).
func (c *Conn) frameSpan(p []byte) int {
	n := 0
	hdrN, left := c.hdrN, c.left
	for n < len(p) {
		if hdrN < frameHeaderLen {
			take := min(frameHeaderLen-hdrN, len(p)-n)
			var h [frameHeaderLen]byte
			copy(h[:], c.hdr[:hdrN])
			copy(h[hdrN:], p[n:n+take])
			hdrN += take
			n += take
			if hdrN == frameHeaderLen {
				left = int(h[0])<<16 | int(h[1])<<8 | int(h[2])
				if left == 0 {
					return n
				}
			}
			continue
		}
		take := min(left, len(p)-n)
		n += take
		left -= take
		if left == 0 {
			return n
		}
	}
	return n
}

func (c *Conn) atBoundary() bool { return c.started && c.hdrN == 0 && c.left == 0 }

// track advances the frame position over bytes written.
func (c *Conn) track(p []byte) {
	for len(p) > 0 {
		if c.hdrN < frameHeaderLen {
			take := min(frameHeaderLen-c.hdrN, len(p))
			copy(c.hdr[c.hdrN:], p[:take])
			c.hdrN += take
			p = p[take:]
			if c.hdrN == frameHeaderLen {
				c.started = true
				c.left = int(c.hdr[0])<<16 | int(c.hdr[1])<<8 | int(c.hdr[2])
				if c.left == 0 {
					c.hdrN = 0
				}
			}
			continue
		}
		take := min(c.left, len(p))
		c.left -= take
		p = p[take:]
		if c.left == 0 {
			c.hdrN = 0
		}
	}
}

// GoAway sends GOAWAY (no error, every stream so far may finish: RFC 9113
// section 6.8's graceful shutdown) at the next frame boundary, now when the
// server is between frames. It reports false for connections that do not
// speak HTTP/2, which have no GOAWAY. It may block while a write of the
// server's is blocked; closing the connection ends both.
func (c *Conn) GoAway() bool {
	if Protocol(c.proto.Load()) != HTTP2 {
		return false
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.sentAway {
		return true
	}
	c.pending = true
	if c.atBoundary() {
		_ = c.writeGoAwayLocked() // a failed write means the connection is gone anyway
	}
	return true
}

func (c *Conn) writeGoAwayLocked() error {
	c.pending, c.sentAway = false, true
	debug := "filter chain changed"
	var f [frameHeaderLen + 8]byte
	payload := 8 + len(debug)
	f[0], f[1], f[2] = byte(payload>>16), byte(payload>>8), byte(payload)
	f[3] = 0x7 // GOAWAY; flags 0, stream 0
	binary.BigEndian.PutUint32(f[9:], 1<<31-1)
	// error code NO_ERROR (0) already zero
	_, err := c.Conn.Write(append(f[:], debug...))
	return err
}

// NetConn returns the wrapped connection, as tls.Conn does.
func (c *Conn) NetConn() net.Conn { return c.Conn }
