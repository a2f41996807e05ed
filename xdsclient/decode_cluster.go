package xdsclient

import (
	"fmt"
	"net"
	"strconv"

	clusterpb "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	corepb "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointpb "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	tlspb "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	"google.golang.org/protobuf/types/known/anypb"
)

// defaultMaxRequests is the circuit breaker limit when none is configured (gRFC A32).
const defaultMaxRequests = 1024

func (dc *decodeContext) decodeCluster(a *anypb.Any) (string, *Cluster, error) {
	pb := &clusterpb.Cluster{}
	if err := a.UnmarshalTo(pb); err != nil {
		return "", nil, fmt.Errorf("cluster: cannot unmarshal %s: %w", a.GetTypeUrl(), err)
	}
	name := pb.GetName()
	if name == "" {
		return "", nil, fmt.Errorf("cluster: name: missing")
	}
	c, err := dc.cluster(pb)
	if err != nil {
		return name, nil, fmt.Errorf("cluster %q: %w", name, err)
	}
	return name, c, nil
}

func (dc *decodeContext) cluster(pb *clusterpb.Cluster) (*Cluster, error) {
	c := &Cluster{Name: pb.GetName(), MaxRequests: defaultMaxRequests}
	switch t := pb.GetClusterDiscoveryType().(type) {
	case *clusterpb.Cluster_Type:
		switch t.Type {
		case clusterpb.Cluster_EDS:
			c.Type = ClusterEDS
			eds := pb.GetEdsClusterConfig()
			if eds == nil {
				return nil, fmt.Errorf("eds_cluster_config: missing for an EDS cluster")
			}
			if eds.GetEdsConfig().GetAds() == nil && eds.GetEdsConfig().GetSelf() == nil {
				return nil, fmt.Errorf("eds_cluster_config.eds_config: must be ads or self")
			}
			c.EDSServiceName = eds.GetServiceName()
		case clusterpb.Cluster_LOGICAL_DNS:
			c.Type = ClusterLogicalDNS
			addr, err := logicalDNSAddress(pb.GetLoadAssignment())
			if err != nil {
				return nil, err
			}
			c.DNSAddress = addr
		default:
			return nil, fmt.Errorf("type: unsupported discovery type %v (want EDS or LOGICAL_DNS)", t.Type)
		}
	case *clusterpb.Cluster_ClusterType:
		return nil, fmt.Errorf("cluster_type: unsupported custom cluster type %q", t.ClusterType.GetName())
	default:
		return nil, fmt.Errorf("type: missing")
	}

	if lbp := pb.GetLoadBalancingPolicy(); lbp != nil {
		policy, err := dc.loadBalancingPolicy(lbp.GetPolicies(), "load_balancing_policy.policies")
		if err != nil {
			return nil, err
		}
		c.LBPolicy = policy
	} else {
		switch pb.GetLbPolicy() {
		case clusterpb.Cluster_ROUND_ROBIN:
			c.LBPolicy = LBRoundRobin
		case clusterpb.Cluster_LEAST_REQUEST:
			c.LBPolicy = LBLeastRequest
		case clusterpb.Cluster_RING_HASH:
			c.LBPolicy = LBRingHash
		default:
			return nil, fmt.Errorf("lb_policy: unsupported %v (want ROUND_ROBIN, LEAST_REQUEST or RING_HASH)", pb.GetLbPolicy())
		}
	}

	for i, th := range pb.GetCircuitBreakers().GetThresholds() {
		if th.GetPriority() != corepb.RoutingPriority_DEFAULT {
			continue
		}
		if mr := th.GetMaxRequests(); mr != nil {
			if mr.GetValue() == 0 {
				return nil, fmt.Errorf("circuit_breakers.thresholds[%d].max_requests: must be positive", i)
			}
			c.MaxRequests = mr.GetValue()
		}
		break
	}

	od, err := outlierDetection(pb.GetOutlierDetection(), "outlier_detection")
	if err != nil {
		return nil, err
	}
	c.OutlierDetection = od

	if ts := pb.GetTransportSocket(); ts != nil {
		tls, err := dc.upstreamTLS(ts, "transport_socket")
		if err != nil {
			return nil, err
		}
		c.TLS = tls
	}
	return c, nil
}

// LB policy extensions mesh implements, by type URL (gRFC A52).
var knownLBPolicies = map[string]LBPolicy{
	"type.googleapis.com/envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin":                                        LBRoundRobin,
	"type.googleapis.com/envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest":                                    LBLeastRequest,
	"type.googleapis.com/envoy.extensions.load_balancing_policies.ring_hash.v3.RingHash":                                            LBRingHash,
	"type.googleapis.com/envoy.extensions.load_balancing_policies.wrr_locality.v3.WrrLocality":                                      LBRoundRobin,
	"type.googleapis.com/envoy.extensions.load_balancing_policies.client_side_weighted_round_robin.v3.ClientSideWeightedRoundRobin": LBRoundRobin,
}

// loadBalancingPolicy picks the first policy of the list that mesh
// implements (gRFC A52); the unsupported ones before it are recorded as
// ignored. A list with none supported is rejected.
func (dc *decodeContext) loadBalancingPolicy(policies []*clusterpb.LoadBalancingPolicy_Policy, path string) (LBPolicy, error) {
	if len(policies) == 0 {
		return "", fmt.Errorf("%s: missing", path)
	}
	for i, p := range policies {
		ppath := fmt.Sprintf("%s[%d].typed_extension_config.typed_config", path, i)
		tc := p.GetTypedExtensionConfig().GetTypedConfig()
		if tc == nil {
			return "", fmt.Errorf("%s: missing", ppath)
		}
		typeURL, err := filterTypeURL(tc)
		if err != nil {
			return "", fmt.Errorf("%s: %w", ppath, err)
		}
		if policy, ok := knownLBPolicies[typeURL]; ok {
			return policy, nil
		}
		dc.ignore(ppath, fmt.Sprintf("unsupported LB policy %s skipped", typeURL))
	}
	return "", fmt.Errorf("%s: no supported policy (want round_robin, least_request, ring_hash or wrr_locality)", path)
}

// maxSNILength is the longest host name TLS allows in SNI.
const maxSNILength = 255

func logicalDNSAddress(la *endpointpb.ClusterLoadAssignment) (string, error) {
	const path = "load_assignment"
	if la == nil {
		return "", fmt.Errorf("%s: missing for a LOGICAL_DNS cluster", path)
	}
	if len(la.GetEndpoints()) != 1 || len(la.GetEndpoints()[0].GetLbEndpoints()) != 1 {
		return "", fmt.Errorf("%s.endpoints: a LOGICAL_DNS cluster needs exactly one locality with exactly one endpoint", path)
	}
	sa := la.GetEndpoints()[0].GetLbEndpoints()[0].GetEndpoint().GetAddress().GetSocketAddress()
	epath := path + ".endpoints[0].lb_endpoints[0].endpoint.address.socket_address"
	if sa == nil {
		return "", fmt.Errorf("%s: missing", epath)
	}
	if sa.GetAddress() == "" {
		return "", fmt.Errorf("%s.address: missing", epath)
	}
	if sa.GetPortValue() == 0 || sa.GetPortValue() > 65535 {
		return "", fmt.Errorf("%s.port_value: %d is not a valid port", epath, sa.GetPortValue())
	}
	return net.JoinHostPort(sa.GetAddress(), strconv.FormatUint(uint64(sa.GetPortValue()), 10)), nil
}

func (dc *decodeContext) upstreamTLS(ts *corepb.TransportSocket, path string) (*UpstreamTLS, error) {
	tc := ts.GetTypedConfig()
	if tc == nil {
		if ts.GetName() == transportSocketTLS {
			return nil, fmt.Errorf("%s.typed_config: missing", path)
		}
		return nil, fmt.Errorf("%s.name: unsupported transport socket %q", path, ts.GetName())
	}
	if tc.GetTypeUrl() != typeURLUpstreamTLS {
		return nil, fmt.Errorf("%s.typed_config: unsupported type %q", path, tc.GetTypeUrl())
	}
	pb := &tlspb.UpstreamTlsContext{}
	if err := tc.UnmarshalTo(pb); err != nil {
		return nil, fmt.Errorf("%s.typed_config: %w", path, err)
	}
	cpath := path + ".typed_config.common_tls_context"
	ctx := pb.GetCommonTlsContext()
	if ctx == nil {
		return nil, fmt.Errorf("%s: missing", cpath)
	}
	id, err := dc.identityProvider(ctx, cpath)
	if err != nil {
		return nil, err
	}
	v, err := dc.validationContext(ctx, cpath)
	if err != nil {
		return nil, err
	}
	if v.roots == nil {
		return nil, fmt.Errorf("%s: no root certificate provider or SDS secret (set validation_context.ca_certificate_provider_instance or validation_context_sds_secret_config)", cpath)
	}
	if len(pb.GetSni()) > maxSNILength {
		return nil, fmt.Errorf("%s.typed_config.sni: %d bytes, longer than %d", path, len(pb.GetSni()), maxSNILength)
	}
	return &UpstreamTLS{Identity: id, Roots: *v.roots, SubjectAltNames: v.sans, SNI: pb.GetSni()}, nil
}
