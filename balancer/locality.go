package balancer

import (
	"cmp"
	"slices"

	"mesh/xdsclient"
)

// weightedAddr is one usable endpoint of a cluster with what locality
// weighting needs: its priority and its share of traffic within it.
type weightedAddr struct {
	addr     string
	priority uint32
	// weight is the locality's weight times the endpoint's share of its
	// locality's endpoint weights (gRFC A52's wrr_locality with weighted
	// endpoints): the endpoint's share of its priority's traffic.
	weight float64
	// locality and endpointWeight are what admin pages show.
	locality       string
	endpointWeight uint32
}

// weightedEndpoints returns a cluster's usable endpoints, ordered by
// priority and then by address, each address once.
func weightedEndpoints(eps *xdsclient.Endpoints) []weightedAddr {
	var out []weightedAddr
	seen := map[string]bool{}
	for _, loc := range eps.Localities {
		var sum float64
		for _, ep := range loc.Endpoints {
			if ep.Health.Usable() && ep.Address != "" {
				sum += float64(max(ep.Weight, 1))
			}
		}
		if sum == 0 {
			continue
		}
		locality := localityName(loc.Locality)
		for _, ep := range loc.Endpoints {
			if !ep.Health.Usable() || ep.Address == "" || seen[ep.Address] {
				continue
			}
			seen[ep.Address] = true
			out = append(out, weightedAddr{
				addr:     ep.Address,
				priority: loc.Priority,
				weight:   float64(max(loc.Weight, 1)) * float64(max(ep.Weight, 1)) / sum,

				locality:       locality,
				endpointWeight: max(ep.Weight, 1),
			})
		}
	}
	slices.SortFunc(out, func(a, b weightedAddr) int {
		if c := cmp.Compare(a.priority, b.priority); c != 0 {
			return c
		}
		return cmp.Compare(a.addr, b.addr)
	})
	return out
}

// localityName writes a locality as Istio's locality labels do:
// "region/zone/sub_zone", without trailing empty parts.
func localityName(l xdsclient.Locality) string {
	switch {
	case l.SubZone != "":
		return l.Region + "/" + l.Zone + "/" + l.SubZone
	case l.Zone != "":
		return l.Region + "/" + l.Zone
	}
	return l.Region
}

// usableAddresses returns the distinct usable endpoint addresses of the most
// preferred priority that has any.
func usableAddresses(eps *xdsclient.Endpoints) []string {
	all := weightedEndpoints(eps)
	var out []string
	for _, wa := range all {
		if wa.priority != all[0].priority {
			break
		}
		out = append(out, wa.addr)
	}
	return out
}

// maxScheduleLength bounds a weighted round-robin schedule; proportions are
// kept to within one pick in this many.
const maxScheduleLength = 4096

// wrrSchedule returns the order in which weighted round robin visits
// endpoints with weights: smooth weighted round robin (as nginx does),
// unrolled once so that a pick is one atomic increment and an index, with
// no lock and no allocation. It returns nil when the weights are equal
// (plain round robin does the same).
func wrrSchedule(weights []float64) []int32 {
	if len(weights) < 2 {
		return nil
	}
	equal := true
	var total float64
	for _, w := range weights {
		equal = equal && w == weights[0]
		total += w
	}
	if equal || total <= 0 {
		return nil
	}
	// Enough slots that the lightest endpoint gets about 16, within bounds.
	lightest := slices.Min(weights)
	length := min(max(int(16*total/lightest), len(weights)), maxScheduleLength)
	schedule := make([]int32, length)
	current := make([]float64, len(weights))
	for i := range schedule {
		best := 0
		for j, w := range weights {
			current[j] += w
			if current[j] > current[best] {
				best = j
			}
		}
		current[best] -= total
		schedule[i] = int32(best)
	}
	return schedule
}
