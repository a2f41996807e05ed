package xdsclient

import (
	"cmp"
	"context"
	"slices"
	"time"

	adminpb "github.com/envoyproxy/go-control-plane/envoy/admin/v3"
	statuspb "github.com/envoyproxy/go-control-plane/envoy/service/status/v3"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/timestamppb"
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
	// resource is missing (DOES_NOT_EXIST, wrapping ErrResourceNotFound).
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
func (c *Client) RegisterCSDS(s grpc.ServiceRegistrar) {
	statuspb.RegisterClientStatusDiscoveryServiceServer(s, csdsServer{c: c})
}

type csdsServer struct {
	statuspb.UnimplementedClientStatusDiscoveryServiceServer
	c *Client
}

func (s csdsServer) FetchClientStatus(context.Context, *statuspb.ClientStatusRequest) (*statuspb.ClientStatusResponse, error) {
	return s.c.clientStatus(), nil
}

func (s csdsServer) StreamClientStatus(stream grpc.BidiStreamingServer[statuspb.ClientStatusRequest, statuspb.ClientStatusResponse]) error {
	for {
		if _, err := stream.Recv(); err != nil {
			return err
		}
		if err := stream.Send(s.c.clientStatus()); err != nil {
			return err
		}
	}
}

// clientStatus builds the CSDS view; the node matchers of a request are
// not consulted, since the client has a single node.
func (c *Client) clientStatus() *statuspb.ClientStatusResponse {
	c.mu.Lock()
	defer c.mu.Unlock()
	cfg := &statuspb.ClientConfig{Node: c.node}
	for k, m := range c.watches {
		info := c.kinds[k]
		for name, st := range m {
			if st.retired {
				continue
			}
			g := &statuspb.ClientConfig_GenericXdsConfig{TypeUrl: info.typeURL, Name: name, VersionInfo: st.version}
			if st.hasValue {
				raw := st.raw
				if resourceKind(k) == kindSecret {
					raw = redactSecret(raw) // keys never leave the process
				}
				g.XdsConfig = &anypb.Any{TypeUrl: info.typeURL, Value: raw}
			}
			if !st.updatedAt.IsZero() {
				g.LastUpdated = timestamppb.New(st.updatedAt)
			}
			switch {
			case st.nackErr != nil:
				g.ClientStatus = adminpb.ClientResourceStatus_NACKED
				g.ConfigStatus = statuspb.ConfigStatus_ERROR
				g.ErrorState = &adminpb.UpdateFailureState{
					LastUpdateAttempt: timestamppb.New(st.nackAt),
					Details:           st.nackErr.Error(),
					VersionInfo:       st.nackVer,
				}
			case st.notFound:
				g.ClientStatus = adminpb.ClientResourceStatus_DOES_NOT_EXIST
				g.ConfigStatus = statuspb.ConfigStatus_UNKNOWN
			case st.hasValue:
				g.ClientStatus = adminpb.ClientResourceStatus_ACKED
				g.ConfigStatus = statuspb.ConfigStatus_SYNCED
			default:
				g.ClientStatus = adminpb.ClientResourceStatus_REQUESTED
				g.ConfigStatus = statuspb.ConfigStatus_NOT_SENT
			}
			cfg.GenericXdsConfigs = append(cfg.GenericXdsConfigs, g)
		}
	}
	slices.SortFunc(cfg.GenericXdsConfigs, func(a, b *statuspb.ClientConfig_GenericXdsConfig) int {
		return cmp.Or(cmp.Compare(a.TypeUrl, b.TypeUrl), cmp.Compare(a.Name, b.Name))
	})
	return &statuspb.ClientStatusResponse{Config: []*statuspb.ClientConfig{cfg}}
}
