package xdsclient

import (
	"fmt"
	"net"
	"strconv"

	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	clusterpb "mesh/xdsclient/internal/lite/envoy/config/cluster/v3"
	corepb "mesh/xdsclient/internal/lite/envoy/config/core/v3"
	endpointpb "mesh/xdsclient/internal/lite/envoy/config/endpoint/v3"
	aggregatepb "mesh/xdsclient/internal/lite/envoy/extensions/clusters/aggregate/v3"
	leastrequestpb "mesh/xdsclient/internal/lite/envoy/extensions/load_balancing_policies/least_request/v3"
	ringhashpb "mesh/xdsclient/internal/lite/envoy/extensions/load_balancing_policies/ring_hash/v3"
	tlspb "mesh/xdsclient/internal/lite/envoy/extensions/transport_sockets/tls/v3"
)

// defaultMaxRequests is the circuit breaker limit when none is configured (gRFC A32).
const defaultMaxRequests = 1024

func (dc *decodeContext) decodeCluster(a *anypb.Any) (string, *Cluster, error) {
	pb := &clusterpb.Cluster{}
	if err := unmarshalAny(a, pb); err != nil {
		return "", nil, fmt.Errorf("cluster: cannot unmarshal %s: %w", a.GetTypeUrl(), err)
	}
	dc.decoded(pb)
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
		return nil, customClusterType(t.ClusterType)
	default:
		return nil, fmt.Errorf("type: missing")
	}

	if lbp := pb.GetLoadBalancingPolicy(); lbp != nil {
		if err := dc.loadBalancingPolicy(c, lbp.GetPolicies(), "load_balancing_policy.policies"); err != nil {
			return nil, err
		}
	} else {
		switch pb.GetLbPolicy() {
		case clusterpb.Cluster_ROUND_ROBIN:
			c.LBPolicy = LBRoundRobin
		case clusterpb.Cluster_LEAST_REQUEST:
			c.LBPolicy = LBLeastRequest
			n, err := choiceCount(pb.GetLeastRequestLbConfig().GetChoiceCount(), "least_request_lb_config.choice_count")
			if err != nil {
				return nil, err
			}
			c.ChoiceCount = n
		case clusterpb.Cluster_RING_HASH:
			c.LBPolicy = LBRingHash
			rh := pb.GetRingHashLbConfig()
			if f := rh.GetHashFunction(); f != clusterpb.Cluster_RingHashLbConfig_XX_HASH {
				return nil, fmt.Errorf("ring_hash_lb_config.hash_function: %v is not supported, only XX_HASH (gRFC A42)", f)
			}
			if err := setRingSizes(c, rh.GetMinimumRingSize(), rh.GetMaximumRingSize(), "ring_hash_lb_config"); err != nil {
				return nil, err
			}
		default:
			return nil, fmt.Errorf("lb_policy: unsupported %v (want ROUND_ROBIN, LEAST_REQUEST or RING_HASH)", pb.GetLbPolicy())
		}
	}
	if lrs := pb.GetLrsServer(); lrs != nil {
		if lrs.GetSelf() == nil {
			return nil, fmt.Errorf("lrs_server: must be self, the ADS server (gRFC A27)")
		}
		dc.ignore("lrs_server", "load reporting is not implemented")
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
const (
	typeURLLeastRequest = "type.googleapis.com/envoy.extensions.load_balancing_policies.least_request.v3.LeastRequest"
	typeURLRingHash     = "type.googleapis.com/envoy.extensions.load_balancing_policies.ring_hash.v3.RingHash"
)

var knownLBPolicies = map[string]LBPolicy{
	"type.googleapis.com/envoy.extensions.load_balancing_policies.round_robin.v3.RoundRobin": LBRoundRobin,
	typeURLLeastRequest: LBLeastRequest,
	typeURLRingHash:     LBRingHash,
	"type.googleapis.com/envoy.extensions.load_balancing_policies.wrr_locality.v3.WrrLocality":                                      LBRoundRobin,
	"type.googleapis.com/envoy.extensions.load_balancing_policies.client_side_weighted_round_robin.v3.ClientSideWeightedRoundRobin": LBRoundRobin,
}

// loadBalancingPolicy sets c's policy to the first of the list that mesh
// implements (gRFC A52), with its config; the unsupported ones before it
// are recorded as ignored. A list with none supported is rejected.
func (dc *decodeContext) loadBalancingPolicy(c *Cluster, policies []*clusterpb.LoadBalancingPolicy_Policy, path string) error {
	if len(policies) == 0 {
		return fmt.Errorf("%s: missing", path)
	}
	for i, p := range policies {
		ppath := fmt.Sprintf("%s[%d].typed_extension_config.typed_config", path, i)
		tc := p.GetTypedExtensionConfig().GetTypedConfig()
		if tc == nil {
			return fmt.Errorf("%s: missing", ppath)
		}
		typeURL, err := filterTypeURL(tc)
		if err != nil {
			return fmt.Errorf("%s: %w", ppath, err)
		}
		policy, ok := knownLBPolicies[typeURL]
		if !ok {
			dc.ignore(ppath, fmt.Sprintf("unsupported LB policy %s skipped", typeURL))
			continue
		}
		c.LBPolicy = policy
		switch {
		case typeURL == typeURLRingHash && tc.GetTypeUrl() == typeURLRingHash:
			rh := &ringhashpb.RingHash{}
			if err := unmarshalAny(tc, rh); err != nil {
				return fmt.Errorf("%s: %w", ppath, err)
			}
			if f := rh.GetHashFunction(); f != ringhashpb.RingHash_DEFAULT_HASH && f != ringhashpb.RingHash_XX_HASH {
				return fmt.Errorf("%s.hash_function: %v is not supported, only XX_HASH (gRFC A42)", ppath, f)
			}
			return setRingSizes(c, rh.GetMinimumRingSize(), rh.GetMaximumRingSize(), ppath)
		case typeURL == typeURLLeastRequest && tc.GetTypeUrl() == typeURLLeastRequest:
			lr := &leastrequestpb.LeastRequest{}
			if err := unmarshalAny(tc, lr); err != nil {
				return fmt.Errorf("%s: %w", ppath, err)
			}
			c.ChoiceCount, err = choiceCount(lr.GetChoiceCount(), ppath+".choice_count")
			return err
		case policy == LBRingHash:
			c.MinRingSize, c.MaxRingSize = DefaultMinRingSize, DefaultMaxRingSize
		case policy == LBLeastRequest:
			c.ChoiceCount = DefaultChoiceCount
		}
		return nil
	}
	return fmt.Errorf("%s: no supported policy (want round_robin, least_request, ring_hash or wrr_locality)", path)
}

// maxRingSize is the largest ring_hash ring size gRFC A42 (like Envoy) accepts.
const maxRingSize = 8 << 20

// setRingSizes validates a ring_hash config's sizes (gRFC A42) and sets
// them on c; unset sizes keep their defaults.
func setRingSizes(c *Cluster, minSize, maxSize *wrapperspb.UInt64Value, path string) error {
	c.MinRingSize, c.MaxRingSize = DefaultMinRingSize, DefaultMaxRingSize
	for _, f := range []struct {
		name string
		v    *wrapperspb.UInt64Value
		out  *uint64
	}{{"minimum_ring_size", minSize, &c.MinRingSize}, {"maximum_ring_size", maxSize, &c.MaxRingSize}} {
		if f.v == nil {
			continue
		}
		if f.v.GetValue() == 0 || f.v.GetValue() > maxRingSize {
			return fmt.Errorf("%s.%s: %d is out of range [1, %d] (gRFC A42)", path, f.name, f.v.GetValue(), maxRingSize)
		}
		*f.out = f.v.GetValue()
	}
	if c.MinRingSize > c.MaxRingSize {
		return fmt.Errorf("%s.minimum_ring_size: %d is above maximum_ring_size %d", path, c.MinRingSize, c.MaxRingSize)
	}
	return nil
}

// choiceCount validates least_request's choice_count (gRFC A48): below 2
// is rejected, above 10 is capped at 10.
func choiceCount(v *wrapperspb.UInt32Value, path string) (uint32, error) {
	if v == nil {
		return DefaultChoiceCount, nil
	}
	n := v.GetValue()
	if n < 2 {
		return 0, fmt.Errorf("%s: %d is below 2 (gRFC A48)", path, n)
	}
	return min(n, maxChoiceCount), nil
}

const maxChoiceCount = 10

// customClusterType explains why a custom cluster type is rejected; an
// aggregate cluster (gRFC A37) with no clusters is invalid in itself.
func customClusterType(ct *clusterpb.Cluster_CustomClusterType) error {
	const aggregateURL = "type.googleapis.com/envoy.extensions.clusters.aggregate.v3.ClusterConfig"
	if ct.GetTypedConfig().GetTypeUrl() == aggregateURL {
		agg := &aggregatepb.ClusterConfig{}
		if err := unmarshalAny(ct.GetTypedConfig(), agg); err != nil {
			return fmt.Errorf("cluster_type.typed_config: %w", err)
		}
		if len(agg.GetClusters()) == 0 {
			return fmt.Errorf("cluster_type.typed_config.clusters: an aggregate cluster must list at least one cluster")
		}
		return fmt.Errorf("cluster_type: aggregate cluster %q (gRFC A37) is not implemented by mesh", ct.GetName())
	}
	return fmt.Errorf("cluster_type: unsupported custom cluster type %q (%s)", ct.GetName(), ct.GetTypedConfig().GetTypeUrl())
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
	if err := unmarshalAny(tc, pb); err != nil {
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
