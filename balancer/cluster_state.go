package balancer

import (
	"errors"
	"fmt"
	"sync/atomic"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// ErrCircuitOpen is wrapped by the error an HTTP request gets when its
// cluster already has max_requests requests in flight (gRFC A32). gRPC
// RPCs fail with UNAVAILABLE and the same message.
var ErrCircuitOpen = errors.New("circuit breaker open")

// clusterState is what outlives routing tables for one cluster of one
// channel: the round-robin counter, the circuit breaker's in-flight count
// and the retry budget. Everything is atomic: picks never lock.
type clusterState struct {
	name        string
	next        atomic.Uint32
	inFlight    atomic.Int64
	retries     atomic.Int64
	maxRequests atomic.Uint32 // 0: no limit
	budget      retryBudget

	overLimitErr    error
	overLimitStatus error
}

func newClusterState(name string, budget retryBudget) *clusterState {
	cs := &clusterState{name: name, budget: budget}
	cs.overLimitErr = fmt.Errorf("cluster %q: %w: max_requests reached", name, ErrCircuitOpen)
	cs.overLimitStatus = status.Error(codes.Unavailable, cs.overLimitErr.Error())
	return cs
}

// acquire counts a request in flight, or reports false when the circuit
// breaker is open.
func (cs *clusterState) acquire() bool {
	n := cs.inFlight.Add(1)
	if limit := cs.maxRequests.Load(); limit > 0 && n > int64(limit) {
		cs.inFlight.Add(-1)
		return false
	}
	return true
}

func (cs *clusterState) release() { cs.inFlight.Add(-1) }

// acquireRetry takes a slot of the retry budget: concurrent retries may not
// exceed budget.percent of the requests in flight, or budget.min, whichever
// is more, so that retries cannot turn an outage into a storm.
func (cs *clusterState) acquireRetry() bool {
	allowed := max(int64(cs.budget.min), cs.inFlight.Load()*int64(cs.budget.percent)/100)
	if cs.retries.Add(1) > allowed {
		cs.retries.Add(-1)
		return false
	}
	return true
}

func (cs *clusterState) releaseRetry() { cs.retries.Add(-1) }

// retryBudget is Envoy's retry_budget: budget_percent and
// min_retry_concurrency.
type retryBudget struct {
	percent uint32
	min     uint32
}
