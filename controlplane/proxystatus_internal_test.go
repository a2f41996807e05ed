package controlplane

import (
	"testing"

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
