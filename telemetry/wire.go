package telemetry

import (
	"net/http"
	"strings"

	"google.golang.org/grpc"
	"google.golang.org/grpc/encoding"
	grpcproto "google.golang.org/grpc/encoding/proto"
	"google.golang.org/grpc/mem"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/runtime/protoiface"
)

// Request and response sizes count what Envoy's request.total_size and
// response.total_size count, which Istio's request and response byte
// metrics record: the bytes of the body on the wire plus the approximate
// uncompressed size of the headers (and trailers), each header counted as
// the length of its name plus the length of its value, pseudo headers
// included.

// Headers every gRPC request carries, whatever its caller adds.
const grpcRequestFixedBytes = len(":method") + len("POST") + len(":scheme") + len("https") +
	len("te") + len("trailers") + len(":path")

// content-type as gRPC sends it, counted apart because grpc-go reports it
// among the metadata on some sides and not on others.
const grpcContentTypeBytes = int64(len("content-type") + len("application/grpc"))

// Headers every gRPC response with headers carries.
const grpcResponseFixedBytes = int64(len(":status") + len("200"))

// grpcUserAgentBytes is grpc-go's own user-agent header.
var grpcUserAgentBytes = int64(len("user-agent") + len("grpc-go/") + len(grpc.Version))

// grpcTimeoutBytes approximates a grpc-timeout header: grpc-go writes at
// most eight digits and a unit.
const grpcTimeoutBytes = int64(len("grpc-timeout") + 9)

// grpcFrameHeader is the length-prefixed message framing: a compression
// flag and a four-byte length before every message.
const grpcFrameHeader = 5

// metadataBytes sums the names and values in md (gRPC metadata or HTTP
// headers).
func metadataBytes[M ~map[string][]string](md M) int64 {
	var n int
	for k, vs := range md {
		for _, v := range vs {
			n += len(k) + len(v)
		}
	}
	return int64(n)
}

// requestHeaderBytes sizes a gRPC request's headers: the fixed ones, :path,
// :authority (unless md has it) and md.
func requestHeaderBytes(fullMethod, authority string, md metadata.MD) int64 {
	n := int64(grpcRequestFixedBytes+len(fullMethod)) + metadataBytes(md)
	if authority != "" && len(md[":authority"]) == 0 {
		n += int64(len(":authority") + len(authority))
	}
	if len(md["content-type"]) == 0 {
		n += grpcContentTypeBytes
	}
	return n
}

// responseHeaderBytes sizes a gRPC response's headers: :status, md and
// content-type (unless md has it).
func responseHeaderBytes(md metadata.MD) int64 {
	n := grpcResponseFixedBytes + metadataBytes(md)
	if len(md["content-type"]) == 0 {
		n += grpcContentTypeBytes
	}
	return n
}

// trailerBytes sizes the trailers a gRPC server ends a call with.
func trailerBytes(code int, message string) int64 {
	n := len("grpc-status") + 1
	if code >= 10 {
		n++
	}
	if message != "" {
		n += len("grpc-message") + len(message)
	}
	return int64(n)
}

// messageWireBytes is a message's size on the wire, uncompressed: grpc-go's
// proto codec writes proto.Size bytes after the frame header. Messages of
// other codecs count their framing only.
//
// A message just sent was just sized by its marshaling, which caches the
// size in the message: reading it back spares walking the message again
// (and the allocations of walking its maps).
func messageWireBytes(m any) int64 {
	pm, ok := m.(proto.Message)
	if !ok {
		return grpcFrameHeader
	}
	r := pm.ProtoReflect()
	if methods := r.ProtoMethods(); methods != nil && methods.Size != nil {
		out := methods.Size(protoiface.SizeInput{Message: r, Flags: protoiface.MarshalUseCachedSize})
		return int64(out.Size) + grpcFrameHeader
	}
	return int64(proto.Size(pm)) + grpcFrameHeader
}

// kvBytes sums the names and values of key/value pairs.
func kvBytes(kv []string) int64 {
	var n int
	for _, s := range kv {
		n += len(s)
	}
	return int64(n)
}

// targetAuthority returns the authority a channel's target names:
// "host:port" of "scheme:///host:port", "scheme://authority/host:port" or a
// bare "host:port", without allocating.
func targetAuthority(target string) string {
	if i := strings.Index(target, "://"); i >= 0 {
		rest := target[i+3:]
		if j := strings.IndexByte(rest, '/'); j >= 0 {
			return rest[j+1:]
		}
		return rest
	}
	return target
}

// httpRequestHeaderBytes sizes an HTTP request's headers as Envoy holds
// them, whatever the protocol version: the request line as the :method,
// :path, :authority and :scheme pseudo headers, then h.
func httpRequestHeaderBytes(method, uri, authority, scheme string, h http.Header) int64 {
	return int64(len(":method")+len(method)+len(":path")+len(uri)+len(":authority")+len(authority)+
		len(":scheme")+len(scheme)) + metadataBytes(h)
}

// httpResponseHeaderBytes sizes an HTTP response's headers: :status and h.
func httpResponseHeaderBytes(h http.Header) int64 {
	return int64(len(":status")+3) + metadataBytes(h)
}

// Headers net/http adds on its own when the map given to it lacks them.
const (
	goUserAgentBytes = int64(len("user-agent") + len("Go-http-client/1.1"))
	httpDateBytes    = int64(len("date") + len(http.TimeFormat))
)

// sizingCodec is a unary client call's codec, kept in its grpcClientCall:
// the codec grpc-go would pick for the call, counting the bytes of the
// messages it marshals and unmarshals. The reply's size then comes with
// its decoding instead of a second walk of it (which allocates for every
// entry of a map field), and both sizes are what went over the wire.
type sizingCodec struct {
	inner *protoCodec // the handler's; nil unless installed
	// sent and received are the bytes marshaled and unmarshaled; -1 until
	// a message is. A unary call marshals and unmarshals on its caller's
	// goroutine, one after the other.
	sent, received int64
}

// protoCodec is the codec grpc-go gives a call without codec options: the
// one registered for proto. Codecs are registered at init (grpc-go's
// encoding package says so), before a handler exists, so a handler looks
// it up once. nil when the registered one is a legacy codec, which grpc-go
// prefers: calls are then left to it.
type protoCodec struct{ encoding.CodecV2 }

func newProtoCodec() *protoCodec {
	if encoding.GetCodec(grpcproto.Name) != nil {
		return nil
	}
	c := encoding.GetCodecV2(grpcproto.Name)
	if c == nil {
		return nil
	}
	return &protoCodec{c}
}

// install sets c up for a unary call with opts, with inner, and returns
// the option that makes the call use it, stored in opt; nil when the call
// picks its own codec or content subtype, or inner is nil: then the
// messages are sized as messageWireBytes sizes them.
func (c *sizingCodec) install(inner *protoCodec, opts []grpc.CallOption, opt *grpc.ForceCodecV2CallOption) grpc.CallOption {
	if inner == nil {
		return nil
	}
	for _, o := range opts {
		switch o.(type) {
		case grpc.ForceCodecV2CallOption, *grpc.ForceCodecV2CallOption,
			grpc.ForceCodecCallOption, *grpc.ForceCodecCallOption,
			grpc.CustomCodecCallOption, *grpc.CustomCodecCallOption,
			grpc.ContentSubtypeCallOption, *grpc.ContentSubtypeCallOption:
			return nil
		}
	}
	c.inner, c.sent, c.received = inner, -1, -1
	*opt = grpc.ForceCodecV2CallOption{CodecV2: c}
	return opt
}

func (c *sizingCodec) Marshal(v any) (mem.BufferSlice, error) {
	data, err := c.inner.Marshal(v)
	if err == nil {
		c.sent = int64(data.Len())
	}
	return data, err
}

func (c *sizingCodec) Unmarshal(data mem.BufferSlice, v any) error {
	c.received = int64(data.Len())
	return c.inner.Unmarshal(data, v)
}

// Name is empty so that the call's content-type stays "application/grpc",
// as grpc-go sends it for its default codec: a forced codec's name would
// become a "+proto" subtype.
func (c *sizingCodec) Name() string { return "" }

// sentBytes is the wire size of the request message m: from the codec
// when the call went through it, else messageWireBytes's.
func (c *sizingCodec) sentBytes(m any) int64 {
	if c.inner != nil && c.sent >= 0 {
		return c.sent + grpcFrameHeader
	}
	return messageWireBytes(m)
}

// receivedBytes is the wire size of the reply message m: from the codec
// when the call went through it, else messageWireBytes's.
func (c *sizingCodec) receivedBytes(m any) int64 {
	if c.inner != nil && c.received >= 0 {
		return c.received + grpcFrameHeader
	}
	return messageWireBytes(m)
}
