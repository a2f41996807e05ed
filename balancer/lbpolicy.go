package balancer

import (
	"math/rand/v2"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"

	"mesh/xdsclient"
)

// ringEntriesPerEndpoint is how many points each endpoint has on a
// ring_hash ring when the cluster's ring sizes allow: a count per endpoint
// that does not depend on how many there are means an endpoint joining or
// leaving moves only the keys it takes or had. The cluster's
// minimum_ring_size and maximum_ring_size (gRFC A42) bound the ring as a
// whole, and win.
const ringEntriesPerEndpoint = 128

// lbConfig is what a cluster's LB policy needs of its config.
type lbConfig struct {
	policy xdsclient.LBPolicy
	// minRing and maxRing bound the ring_hash ring; 0 means no bound.
	minRing, maxRing uint64
	// choices is least_request's choice_count; 0 means the default, 2.
	choices int
}

func lbConfigOf(c *xdsclient.Cluster) lbConfig {
	return lbConfig{policy: c.LBPolicy, minRing: c.MinRingSize, maxRing: c.MaxRingSize, choices: int(c.ChoiceCount)}
}

// ringEntries is how many points each of n endpoints gets.
func (cfg lbConfig) ringEntries(n int) int {
	per := uint64(ringEntriesPerEndpoint)
	if cfg.minRing > 0 {
		per = max(per, (cfg.minRing+uint64(n)-1)/uint64(n))
	}
	if cfg.maxRing > 0 {
		per = min(per, max(cfg.maxRing/uint64(n), 1))
	}
	return int(per)
}

// ringEntry is one point of a ring_hash ring: requests whose hash is at or
// below hash (and above the previous entry's) go to endpoint index.
type ringEntry struct {
	hash  uint64
	index int
}

// endpointChooser picks one of a cluster's usable endpoints by the cluster's
// LB policy. It is immutable; the counters it reads belong to the endpoints.
type endpointChooser struct {
	policy xdsclient.LBPolicy
	// choices is how many endpoints least_request samples.
	choices int
	// active[i] counts requests in flight to endpoint i (least_request).
	active []*atomic.Int64
	// ring is sorted by hash (ring_hash).
	ring []ringEntry
	// schedule, when set, is the weighted round-robin order of endpoint
	// indexes (round_robin with unequal locality or endpoint weights).
	schedule []int32
}

// newEndpointChooser prepares policy, with its default config, over
// endpoints named by addrs, whose in-flight counters are active.
func newEndpointChooser(policy xdsclient.LBPolicy, addrs []string, active []*atomic.Int64) endpointChooser {
	return newChooser(lbConfig{policy: policy}, addrs, active)
}

// newChooser is newEndpointChooser with a cluster's LB config.
func newChooser(cfg lbConfig, addrs []string, active []*atomic.Int64) endpointChooser {
	policy := cfg.policy
	c := endpointChooser{policy: policy, active: active, choices: cfg.choices}
	if c.choices < 2 {
		c.choices = xdsclient.DefaultChoiceCount
	}
	if policy == xdsclient.LBRingHash && len(addrs) > 0 {
		per := cfg.ringEntries(len(addrs))
		c.ring = make([]ringEntry, 0, per*len(addrs))
		for i, addr := range addrs {
			for j := range per {
				c.ring = append(c.ring, ringEntry{hash: mix64(hashString(fnvOffset, addr+"_"+strconv.Itoa(j))), index: i})
			}
		}
		slices.SortFunc(c.ring, func(a, b ringEntry) int {
			switch {
			case a.hash < b.hash:
				return -1
			case a.hash > b.hash:
				return 1
			}
			return a.index - b.index
		})
	}
	return c
}

// choose returns the index of the endpoint, of n, that a request goes to.
// next is the cluster's round-robin counter; hash is the request hash for
// ring_hash, when hashed is set (otherwise a random one is used, as gRPC
// does). It does not allocate.
func (c *endpointChooser) choose(n int, next *atomic.Uint32, hash uint64, hashed bool) int {
	switch {
	case c.policy == xdsclient.LBLeastRequest && len(c.active) == n && n > 1:
		best := rand.IntN(n)
		for range c.choices - 1 {
			if i := rand.IntN(n); c.active[i].Load() < c.active[best].Load() {
				best = i
			}
		}
		return best
	case c.policy == xdsclient.LBRingHash && len(c.ring) > 0:
		if !hashed {
			hash = rand.Uint64()
		}
		i, _ := slices.BinarySearchFunc(c.ring, hash, func(e ringEntry, h uint64) int {
			switch {
			case e.hash < h:
				return -1
			case e.hash > h:
				return 1
			}
			return 0
		})
		if i == len(c.ring) {
			i = 0
		}
		return c.ring[i].index
	}
	if len(c.schedule) > 0 {
		return int(c.schedule[next.Add(1)%uint32(len(c.schedule))])
	}
	return int(next.Add(1) % uint32(n))
}

// withWeights makes a round_robin chooser weighted by weights (one per
// endpoint, in the chooser's order).
func (c endpointChooser) withWeights(weights []float64) endpointChooser {
	if c.policy == xdsclient.LBRoundRobin || c.policy == "" {
		c.schedule = wrrSchedule(weights)
	}
	return c
}

// FNV-1a, 64 bit: stable across processes, so every client puts a key on
// the same endpoint.
const (
	fnvOffset = 14695981039346656037
	fnvPrime  = 1099511628211
)

// mix64 spreads FNV's output over all 64 bits (MurmurHash3's finalizer):
// keys that differ in their last byte would otherwise land close together
// on the ring.
func mix64(h uint64) uint64 {
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	h ^= h >> 33
	h *= 0xc4ceb9fe1a85ec53
	h ^= h >> 33
	return h
}

func hashString(h uint64, s string) uint64 {
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= fnvPrime
	}
	return h
}

// requestHash computes a route's hash policies over a request (gRFC A42):
// each policy that finds its input adds to the hash, and a terminal one
// that did ends the list. hashed is false when no policy applied. A header
// present more than once hashes as its values joined with ",". It does not
// allocate.
func requestHash(policies []xdsclient.HashPolicy, headers Headers, query url.Values, channelID uint64) (hash uint64, hashed bool) {
	for i := range policies {
		p := &policies[i]
		var h uint64
		ok := false
		switch p.Kind {
		case xdsclient.HashHeader:
			if headers == nil || len(p.Name) > 4 && p.Name[len(p.Name)-4:] == "-bin" {
				break
			}
			values := headers.Values(p.Name)
			if len(values) == 0 {
				break
			}
			h, ok = fnvOffset, true
			if p.Rewrite != nil {
				// regex_rewrite (gRFC A42) hashes the rewritten value; it
				// allocates, so only routes that ask for it pay.
				h = hashString(h, p.Rewrite.ReplaceAllString(strings.Join(values, ","), p.Substitution))
				break
			}
			for j, v := range values {
				if j > 0 {
					h = hashString(h, ",")
				}
				h = hashString(h, v)
			}
		case xdsclient.HashChannelID:
			h, ok = channelID, true
		case xdsclient.HashQueryParameter:
			if values := query[p.Name]; len(values) > 0 {
				h, ok = hashString(fnvOffset, values[0]), true
			}
		}
		if !ok {
			continue
		}
		h = mix64(h)
		// Combine as Envoy does: rotate the hash so far, then xor.
		hash = (hash<<1 | hash>>63) ^ h
		hashed = true
		if p.Terminal {
			break
		}
	}
	return hash, hashed
}
