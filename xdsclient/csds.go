package xdsclient

import (
	"cmp"
	"context"
	"slices"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protowire"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/emptypb"
)

// ResourceStatusKind is where a watched resource stands, in CSDS terms.
type ResourceStatusKind string

// Resource statuses, named as in envoy.admin.v3.ClientResourceStatus.
const (
	// StatusRequested: asked for, no answer yet.
	StatusRequested ResourceStatusKind = "REQUESTED"
	// StatusAcked: a valid version is in force.
	StatusAcked ResourceStatusKind = "ACKED"
	// StatusNACKed: the last version received was rejected; the previous
	// one (if any, see Version) stays in force.
	StatusNACKed ResourceStatusKind = "NACKED"
	// StatusDoesNotExist: the server has no such resource.
	StatusDoesNotExist ResourceStatusKind = "DOES_NOT_EXIST"
)

// ResourceStatus is one watched resource as the client sees it, for
// admin pages and debugging.
type ResourceStatus struct {
	// Type is "listener", "route_config", "cluster",
	// "cluster_load_assignment" or "secret"; TypeURL is its xDS type URL.
	Type    string
	TypeURL string
	Name    string
	// Version is the version of the value in force ("" if none).
	Version string
	Status  ResourceStatusKind
	// Error says why the last update was rejected (NACKED) or why the
	// resource is missing (DOES_NOT_EXIST: "xds: resource does not exist: ...").
	Error error
	// UpdatedAt is when the value in force (or the NotFound) arrived;
	// zero while REQUESTED.
	UpdatedAt time.Time
	// Source is the URI of the server the value came from.
	Source string
	// FromCache is set while the value is the one loaded from the
	// WithCache file and no server has confirmed or replaced it.
	FromCache bool
	// Ignored lists the fields of the value that mesh does not implement
	// and skipped, each as "field path: what was skipped".
	Ignored []string
	// Value is the decoded value in force (*Listener, *RouteConfig,
	// *Cluster, *Endpoints or *Secret); nil when none. It is shared: do not
	// modify it. A *Secret's private key is left out: keys never leave the
	// process through Dump.
	Value any
}

// Dump lists every watched resource, sorted by type and name.
func (c *Client) Dump() []ResourceStatus {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []ResourceStatus
	for k, m := range c.watches {
		info := c.kinds[k]
		for name, st := range m {
			if st.retired {
				continue
			}
			rs := ResourceStatus{
				Type: info.name, TypeURL: info.typeURL, Name: name,
				Version: st.version, UpdatedAt: st.updatedAt, Source: st.source, FromCache: st.fromCache,
				Ignored: slices.Clone(st.ignored),
			}
			switch {
			case st.nackErr != nil:
				rs.Status, rs.Error = StatusNACKed, st.nackErr
			case st.notFound:
				rs.Status, rs.Error = StatusDoesNotExist, st.absentErr
			case st.hasValue:
				rs.Status = StatusAcked
			default:
				rs.Status = StatusRequested
			}
			if st.hasValue {
				rs.Value = withoutKey(st.value)
			}
			out = append(out, rs)
		}
	}
	slices.SortFunc(out, func(a, b ResourceStatus) int {
		return cmp.Or(cmp.Compare(a.TypeURL, b.TypeURL), cmp.Compare(a.Name, b.Name))
	})
	return out
}

// RegisterCSDS registers on s a Client Status Discovery Service
// (envoy.service.status.v3.ClientStatusDiscoveryService) that reports
// every watched resource of c with its version, status, last update time
// and, when NACKed, the error; tools such as istioctl and grpcdebug read it.
//
// The service is encoded field by field (csdsResponse) rather than through
// go-control-plane's status and admin packages: importing those links
// Envoy's whole bootstrap and admin proto tree (about 2 MB) into every
// client, for a service few of them register.
func (c *Client) RegisterCSDS(s grpc.ServiceRegistrar) {
	s.RegisterService(&csdsServiceDesc, c)
}

var csdsServiceDesc = grpc.ServiceDesc{
	ServiceName: "envoy.service.status.v3.ClientStatusDiscoveryService",
	HandlerType: (*any)(nil),
	Methods: []grpc.MethodDesc{{
		MethodName: "FetchClientStatus",
		Handler: func(srv any, ctx context.Context, dec func(any) error, intercept grpc.UnaryServerInterceptor) (any, error) {
			c := srv.(*Client)
			// The request's node matchers are not consulted (the client has
			// a single node), so it is read as a message with no known fields.
			in := new(emptypb.Empty)
			if err := dec(in); err != nil {
				return nil, err
			}
			if intercept == nil {
				return c.csdsResponse(), nil
			}
			info := &grpc.UnaryServerInfo{Server: srv, FullMethod: "/envoy.service.status.v3.ClientStatusDiscoveryService/FetchClientStatus"}
			return intercept(ctx, in, info, func(context.Context, any) (any, error) { return c.csdsResponse(), nil })
		},
	}},
	Streams: []grpc.StreamDesc{{
		StreamName:    "StreamClientStatus",
		ServerStreams: true,
		ClientStreams: true,
		Handler: func(srv any, stream grpc.ServerStream) error {
			c := srv.(*Client)
			for {
				if err := stream.RecvMsg(new(emptypb.Empty)); err != nil {
					return err
				}
				if err := stream.SendMsg(c.csdsResponse()); err != nil {
					return err
				}
			}
		},
	}},
	Metadata: "envoy/service/status/v3/csds.proto",
}

// Field numbers of envoy.service.status.v3 and envoy.admin.v3 messages
// (csds.proto, config_dump_shared.proto) and of google.protobuf's Any and
// Timestamp. The wire format is checked against go-control-plane's own
// generated types in csds_test.go.
const (
	fieldResponseConfig = 1 // ClientStatusResponse.config

	fieldConfigNode    = 1 // ClientConfig.node
	fieldConfigGeneric = 3 // ClientConfig.generic_xds_configs

	fieldGenericTypeURL      = 1 // ClientConfig.GenericXdsConfig.type_url
	fieldGenericName         = 2
	fieldGenericVersion      = 3
	fieldGenericXDSConfig    = 4 // Any
	fieldGenericLastUpdated  = 5 // Timestamp
	fieldGenericConfigStatus = 6 // envoy.service.status.v3.ConfigStatus
	fieldGenericClientStatus = 7 // envoy.admin.v3.ClientResourceStatus
	fieldGenericErrorState   = 8 // envoy.admin.v3.UpdateFailureState

	fieldFailureLastAttempt = 2 // UpdateFailureState.last_update_attempt
	fieldFailureDetails     = 3
	fieldFailureVersion     = 4

	fieldAnyTypeURL = 1
	fieldAnyValue   = 2

	fieldTimestampSeconds = 1
	fieldTimestampNanos   = 2
)

// Values of envoy.service.status.v3.ConfigStatus and
// envoy.admin.v3.ClientResourceStatus.
const (
	configStatusUnknown = 0
	configStatusSynced  = 1
	configStatusNotSent = 2
	configStatusError   = 4

	clientStatusRequested    = 1
	clientStatusDoesNotExist = 2
	clientStatusAcked        = 3
	clientStatusNACKed       = 4
)

// csdsResponse is a ClientStatusResponse in a message of no known fields:
// its unknown fields, which proto.Marshal writes out as they are, carry the
// encoded response.
func (c *Client) csdsResponse() *emptypb.Empty {
	out := new(emptypb.Empty)
	out.ProtoReflect().SetUnknown(protoreflect.RawFields(c.clientStatus()))
	return out
}

// clientStatus encodes the CSDS view as a ClientStatusResponse.
func (c *Client) clientStatus() []byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	type entry struct {
		typeURL, name string
		enc           []byte
	}
	var entries []entry
	for k, m := range c.watches {
		info := c.kinds[k]
		for name, st := range m {
			if st.retired {
				continue
			}
			var g []byte
			g = appendString(g, fieldGenericTypeURL, info.typeURL)
			g = appendString(g, fieldGenericName, name)
			g = appendString(g, fieldGenericVersion, st.version)
			if st.hasValue {
				raw := st.raw
				if resourceKind(k) == kindSecret {
					raw = redactSecret(raw) // keys never leave the process
				}
				var a []byte
				a = appendString(a, fieldAnyTypeURL, info.typeURL)
				if len(raw) > 0 {
					a = protowire.AppendTag(a, fieldAnyValue, protowire.BytesType)
					a = protowire.AppendBytes(a, raw)
				}
				g = appendMessage(g, fieldGenericXDSConfig, a)
			}
			if !st.updatedAt.IsZero() {
				g = appendMessage(g, fieldGenericLastUpdated, timestamp(st.updatedAt))
			}
			var config, client uint64
			var failure []byte // an UpdateFailureState, when NACKed
			switch {
			case st.nackErr != nil:
				config, client = configStatusError, clientStatusNACKed
				failure = appendMessage(failure, fieldFailureLastAttempt, timestamp(st.nackAt))
				failure = appendString(failure, fieldFailureDetails, st.nackErr.Error())
				failure = appendString(failure, fieldFailureVersion, st.nackVer)
			case st.notFound:
				config, client = configStatusUnknown, clientStatusDoesNotExist
			case st.hasValue:
				config, client = configStatusSynced, clientStatusAcked
			default:
				config, client = configStatusNotSent, clientStatusRequested
			}
			g = appendVarint(g, fieldGenericConfigStatus, config)
			g = appendVarint(g, fieldGenericClientStatus, client)
			if failure != nil {
				g = appendMessage(g, fieldGenericErrorState, failure)
			}
			entries = append(entries, entry{info.typeURL, name, g})
		}
	}
	slices.SortFunc(entries, func(a, b entry) int {
		return cmp.Or(cmp.Compare(a.typeURL, b.typeURL), cmp.Compare(a.name, b.name))
	})
	var cfg []byte
	if c.node != nil {
		node, err := c.node.AppendTo(nil)
		if err == nil {
			cfg = appendMessage(cfg, fieldConfigNode, node)
		}
	}
	for _, e := range entries {
		cfg = appendMessage(cfg, fieldConfigGeneric, e.enc)
	}
	return appendMessage(nil, fieldResponseConfig, cfg)
}

// appendString appends a string field, leaving it out when empty as
// proto3 does.
func appendString(b []byte, num protowire.Number, s string) []byte {
	if s == "" {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendString(b, s)
}

// appendVarint appends an integer or enum field, left out when zero.
func appendVarint(b []byte, num protowire.Number, v uint64) []byte {
	if v == 0 {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.VarintType)
	return protowire.AppendVarint(b, v)
}

// appendMessage appends an embedded message field, present even if empty.
func appendMessage(b []byte, num protowire.Number, msg []byte) []byte {
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendBytes(b, msg)
}

// timestamp encodes t as a google.protobuf.Timestamp.
func timestamp(t time.Time) []byte {
	b := appendVarint(nil, fieldTimestampSeconds, uint64(t.Unix()))
	return appendVarint(b, fieldTimestampNanos, uint64(t.Nanosecond()))
}
