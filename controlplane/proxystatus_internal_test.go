package controlplane

import (
	"slices"
	"testing"

	"mesh/internal/testutil"

	"google.golang.org/genproto/googleapis/rpc/status"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
)

// TestSyncStateRecord: an ACK names the version running, a NACK keeps it
// and carries the node's error in full, and the next ACK clears the error.
func TestSyncStateRecord(t *testing.T) {
	const cds = "type.googleapis.com/envoy.config.cluster.v3.Cluster"
	var st syncState
	st.record(cds, &discovery.DiscoveryRequest{TypeUrl: cds}, nil) // the first request: nothing ACKed yet
	if _, ok := st.acked[cds]; ok || st.lastSeen.IsZero() {
		t.Fatalf("after the first request: acked %v, last seen %v", st.acked, st.lastSeen)
	}
	st.record(cds, &discovery.DiscoveryRequest{TypeUrl: cds, VersionInfo: "v1", ResponseNonce: "1"}, nil)
	const msg = "cluster outbound|8080|v2|payments.default.svc.cluster.local: lb_policy: unsupported RING_HASH config"
	st.record(cds, &discovery.DiscoveryRequest{TypeUrl: cds, VersionInfo: "v1", ResponseNonce: "2", ErrorDetail: &status.Status{Message: msg}}, nil)
	if st.acked[cds] != "v1" || st.nack[cds] != msg {
		t.Fatalf("after a NACK: acked %q, nack %q", st.acked[cds], st.nack[cds])
	}
	st.record(cds, &discovery.DiscoveryRequest{TypeUrl: cds, VersionInfo: "v3", ResponseNonce: "3"}, nil)
	if st.acked[cds] != "v3" || st.nack[cds] != "" {
		t.Fatalf("after the next ACK: acked %q, nack %q", st.acked[cds], st.nack[cds])
	}
	st.record(cds, nil, &discovery.DeltaDiscoveryRequest{TypeUrl: cds, ErrorDetail: &status.Status{Message: msg}})
	if st.nack[cds] != msg {
		t.Fatalf("a delta NACK: nack %q", st.nack[cds])
	}
}

// TestProxyStatusOrdersByWorkload: rows come in workload order, then node
// order, not in the order the streams connected, which changes with every
// restart. (These nodes enrolled no workload name, so the node orders.)
func TestProxyStatusOrdersByWorkload(t *testing.T) {
	s := newTestServer(t)
	ctx := testutil.Context(t)
	declarePayments(t, s)
	serve(t, s, "payments-2", "127.0.0.1:9002", "v2")
	serve(t, s, "payments-1", "127.0.0.1:9001", "v1")
	var got []string
	testutil.WaitFor(ctx, t, "both workloads in proxy-status", func() bool {
		got = got[:0]
		for _, p := range s.ProxyStatus() {
			got = append(got, p.Workload+" "+p.Node)
		}
		return len(got) == 2
	})
	if want := []string{"default/ " + paymentsNode("payments-1", "", "").id, "default/ " + paymentsNode("payments-2", "", "").id}; !slices.Equal(got, want) {
		t.Errorf("proxy-status rows %v, want %v", got, want)
	}
}
