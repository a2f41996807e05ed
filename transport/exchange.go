package transport

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"
)

// alpnH2PeerMetadata is the application protocol two mesh workloads
// negotiate to exchange their peer metadata once per connection: each
// side writes one frame right after the TLS handshake, then the
// connection speaks HTTP/2 as under "h2". Sending the metadata in the
// headers of every call instead costs both ends an encode, a decode and
// copies of a value hundreds of bytes long on every call
// (benchmarks/TELEMETRY.md).
const alpnH2PeerMetadata = "mesh-h2-peer-metadata"

// maxPeerMetadata bounds the frame a peer may send. Istio's peer metadata
// is well under a kilobyte.
const maxPeerMetadata = 16 << 10

// peerMetadataOption implements every option type that WithPeerMetadata
// applies to.
type peerMetadataOption func(*options)

func (f peerMetadataOption) applyClient(o *options)      { f(o) }
func (f peerMetadataOption) applyServer(o *options)      { f(o) }
func (f peerMetadataOption) applyGRPCInbound(o *options) { f(o) }

// PeerMetadataOption configures the gRPC connections of NewClientCredentials,
// NewServerCredentials and NewGRPCInbound.
type PeerMetadataOption interface {
	ClientOption
	ServerOption
	GRPCInboundOption
}

// WithPeerMetadata has gRPC connections over TLS between two workloads
// that both set it exchange value, this workload's Istio peer metadata
// (telemetry.PeerMetadata makes it), once, right after the handshake: both
// sides offer the ALPN protocol "mesh-h2-peer-metadata" before "h2", each
// writes its value in one frame and reads the other's, and AuthInfo's
// PeerMetadata reports the other's. Calls on such a connection need not
// carry the metadata in their headers. A peer that does not offer the
// protocol (grpc-go, Envoy, a mesh workload without it) negotiates plain
// "h2" and nothing is exchanged. An empty value exchanges nothing. The
// value is a claim of the peer, not proven by its certificate: use it for
// labels, never for authorization. HTTP connections never exchange it.
func WithPeerMetadata(value string) PeerMetadataOption {
	return peerMetadataOption(func(o *options) { o.peerMetadata = value })
}

// exchangePeerMetadata writes local as one frame (a 2-byte big-endian
// length, then the bytes) and reads the peer's, before deadline when it is
// not zero.
func exchangePeerMetadata(conn *tls.Conn, local string, deadline time.Time) (string, error) {
	if len(local) > maxPeerMetadata {
		return "", fmt.Errorf("peer metadata exchange: own metadata is %d bytes, over the limit of %d", len(local), maxPeerMetadata)
	}
	if !deadline.IsZero() {
		if err := conn.SetDeadline(deadline); err != nil {
			return "", fmt.Errorf("peer metadata exchange: %w", err)
		}
		defer conn.SetDeadline(time.Time{})
	}
	frame := make([]byte, 2+len(local))
	binary.BigEndian.PutUint16(frame, uint16(len(local)))
	copy(frame[2:], local)
	// Both sides write before they read; a frame this small fits in the
	// socket's buffers, so neither waits for the other to read.
	if _, err := conn.Write(frame); err != nil {
		return "", fmt.Errorf("peer metadata exchange: sending: %w", err)
	}
	var size [2]byte
	if _, err := io.ReadFull(conn, size[:]); err != nil {
		return "", fmt.Errorf("peer metadata exchange: reading the peer's: %w", err)
	}
	n := int(binary.BigEndian.Uint16(size[:]))
	if n > maxPeerMetadata {
		return "", fmt.Errorf("peer metadata exchange: the peer's is %d bytes, over the limit of %d", n, maxPeerMetadata)
	}
	value := make([]byte, n)
	if _, err := io.ReadFull(conn, value); err != nil {
		return "", fmt.Errorf("peer metadata exchange: reading the peer's: %w", err)
	}
	return string(value), nil
}

// deadlineOf returns ctx's deadline, or the zero time.
func deadlineOf(ctx context.Context) time.Time {
	d, _ := ctx.Deadline()
	return d
}

// errNoExchange is what a peer gets that negotiated the exchange without
// having been offered it: crypto/tls never lets that happen.
var errNoExchange = errors.New("negotiated the peer metadata exchange without offering it")
