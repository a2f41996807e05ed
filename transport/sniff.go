package transport

import (
	"errors"
	"fmt"
	"io"
	"net"
	"time"
)

// Transport protocols as Envoy's tls_inspector names them; filter chains
// match on them (FilterChainMatch.transport_protocol) to serve TLS and
// plaintext clients on one port, as istio's PERMISSIVE mode does.
const (
	ProtocolTLS       = "tls"
	ProtocolRawBuffer = "raw_buffer"
)

// sniffBufferSize is how much of the first read is kept for replay; one
// read is enough to classify, and TLS records and the HTTP/2 preface both
// start within it.
const sniffBufferSize = 64

// detectProtocol classifies a connection by its first bytes: a TLS record
// carrying a handshake (content type 0x16, major version 3) is ProtocolTLS,
// anything else ProtocolRawBuffer. first may be as short as one byte; with
// one byte only the content type is checked.
func detectProtocol(first []byte) string {
	if len(first) == 0 || first[0] != 0x16 {
		return ProtocolRawBuffer
	}
	if len(first) >= 2 && first[1] != 0x03 {
		return ProtocolRawBuffer
	}
	return ProtocolTLS
}

// sniffedConn replays the bytes read while sniffing before reading on from
// the underlying connection.
type sniffedConn struct {
	net.Conn
	pending []byte
}

func (c *sniffedConn) Read(p []byte) (int, error) {
	if len(c.pending) > 0 {
		n := copy(p, c.pending)
		c.pending = c.pending[n:]
		if len(c.pending) == 0 {
			c.pending = nil // let the buffer go
		}
		return n, nil
	}
	return c.Conn.Read(p)
}

// sniff reads whatever the client sent first (at least one byte), under a
// read deadline of timeout, and returns a connection that replays those
// bytes together with the detected protocol. The read deadline is left in
// place; the caller clears it once its own handshake is done.
func sniff(conn net.Conn, timeout time.Duration) (net.Conn, string, error) {
	if timeout > 0 {
		if err := conn.SetReadDeadline(time.Now().Add(timeout)); err != nil {
			return nil, "", fmt.Errorf("set read deadline for protocol detection: %w", err)
		}
	}
	buf := make([]byte, sniffBufferSize)
	for range maxEmptyReads {
		n, err := conn.Read(buf)
		if n > 0 {
			first := buf[:n]
			return &sniffedConn{Conn: conn, pending: first}, detectProtocol(first), nil
		}
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				return nil, "", fmt.Errorf("protocol detection: client sent nothing within %v: %w", timeout, err)
			}
			return nil, "", fmt.Errorf("protocol detection: %w", err)
		}
	}
	return nil, "", fmt.Errorf("protocol detection: %w", io.ErrNoProgress)
}

// maxEmptyReads stops a misbehaving net.Conn that keeps returning no bytes
// and no error from spinning the handshake forever.
const maxEmptyReads = 100

// NetConn returns the underlying connection, as tls.Conn does, so a Chooser
// can find the connection its listener accepted.
func (c *sniffedConn) NetConn() net.Conn { return c.Conn }
