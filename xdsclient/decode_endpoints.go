package xdsclient

import (
	"fmt"

	"google.golang.org/protobuf/types/known/anypb"

	corepb "mesh/xdsclient/internal/lite/envoy/config/core/v3"
	endpointpb "mesh/xdsclient/internal/lite/envoy/config/endpoint/v3"
)

func (dc *decodeContext) decodeEndpoints(a *anypb.Any) (string, *Endpoints, error) {
	pb := &endpointpb.ClusterLoadAssignment{}
	if err := unmarshalAny(a, pb); err != nil {
		return "", nil, fmt.Errorf("cluster_load_assignment: cannot unmarshal %s: %w", a.GetTypeUrl(), err)
	}
	dc.decoded(pb)
	name := pb.GetClusterName()
	if name == "" {
		return "", nil, fmt.Errorf("cluster_load_assignment: cluster_name: missing")
	}
	e, err := endpoints(pb)
	if err != nil {
		return name, nil, fmt.Errorf("cluster_load_assignment %q: %w", name, err)
	}
	return name, e, nil
}

func endpoints(pb *endpointpb.ClusterLoadAssignment) (*Endpoints, error) {
	out := &Endpoints{Name: pb.GetClusterName()}
	seen := map[string]string{}
	priorities := map[uint32]bool{}
	localities := map[string]string{} // priority and locality -> path
	maxPriority := uint32(0)
	for i, le := range pb.GetEndpoints() {
		path := fmt.Sprintf("endpoints[%d]", i)
		w := le.GetLoadBalancingWeight()
		if w == nil || w.GetValue() == 0 {
			return nil, fmt.Errorf("%s.load_balancing_weight: must be set and positive", path)
		}
		loc := LocalityEndpoints{
			Locality: Locality{Region: le.GetLocality().GetRegion(), Zone: le.GetLocality().GetZone(), SubZone: le.GetLocality().GetSubZone()},
			Weight:   w.GetValue(),
			Priority: le.GetPriority(),
		}
		// gRFC A27: a locality appears once per priority.
		key := fmt.Sprintf("%d|%s|%s|%s", loc.Priority, loc.Locality.Region, loc.Locality.Zone, loc.Locality.SubZone)
		if prev, dup := localities[key]; dup {
			return nil, fmt.Errorf("%s.locality: duplicate locality %+v in priority %d (also at %s)", path, loc.Locality, loc.Priority, prev)
		}
		localities[key] = path
		priorities[loc.Priority] = true
		maxPriority = max(maxPriority, loc.Priority)
		for j, lbe := range le.GetLbEndpoints() {
			epath := fmt.Sprintf("%s.lb_endpoints[%d]", path, j)
			ep := lbe.GetEndpoint()
			if ep == nil {
				return nil, fmt.Errorf("%s.endpoint: missing", epath)
			}
			addr, err := socketAddress(ep.GetAddress(), epath+".endpoint.address", false)
			if err != nil {
				return nil, err
			}
			if prev, dup := seen[addr]; dup {
				return nil, fmt.Errorf("%s.endpoint.address: duplicate address %s (also at %s)", epath, addr, prev)
			}
			seen[addr] = epath
			weight := uint32(1)
			if lw := lbe.GetLoadBalancingWeight(); lw != nil {
				if lw.GetValue() == 0 {
					return nil, fmt.Errorf("%s.load_balancing_weight: must be positive", epath)
				}
				weight = lw.GetValue()
			}
			loc.Endpoints = append(loc.Endpoints, Endpoint{Address: addr, Health: healthStatus(lbe.GetHealthStatus()), Weight: weight})
		}
		out.Localities = append(out.Localities, loc)
	}
	for p := uint32(0); len(priorities) > 0 && p <= maxPriority; p++ {
		if !priorities[p] {
			return nil, fmt.Errorf("endpoints: priorities must be contiguous from 0, priority %d is missing", p)
		}
	}
	for i, d := range pb.GetPolicy().GetDropOverloads() {
		path := fmt.Sprintf("policy.drop_overloads[%d]", i)
		if d.GetCategory() == "" {
			return nil, fmt.Errorf("%s.category: missing", path)
		}
		v, err := fractionPerMillion(d.GetDropPercentage(), path+".drop_percentage")
		if err != nil {
			return nil, err
		}
		if out.DropPerMillion == nil {
			out.DropPerMillion = map[string]uint32{}
		}
		out.DropPerMillion[d.GetCategory()] = v
	}
	return out, nil
}

func healthStatus(h corepb.HealthStatus) HealthStatus {
	switch h {
	case corepb.HealthStatus_HEALTHY:
		return HealthHealthy
	case corepb.HealthStatus_UNHEALTHY:
		return HealthUnhealthy
	case corepb.HealthStatus_DRAINING:
		return HealthDraining
	case corepb.HealthStatus_TIMEOUT:
		return HealthTimeout
	case corepb.HealthStatus_DEGRADED:
		return HealthDegraded
	}
	return HealthUnknown
}
