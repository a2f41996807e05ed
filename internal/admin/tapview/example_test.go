package tapview_test

import (
	"fmt"
	"time"

	"mesh/internal/admin/tapview"
	"mesh/telemetry"
)

// A gRPC call's access log entry as /debug/tap streams it: the status by
// name, and neither the query nor the authority's userinfo.
func ExampleRecordOf() {
	r := tapview.RecordOf(telemetry.Entry{
		StartTime: time.Unix(1, 0), Method: "POST", Path: "/shop.Payments/Charge?token=secret",
		Authority: "user:secret@payments:8080", GRPCStatus: "14", ResponseCode: 200,
		Duration: 1500 * time.Microsecond, PeerPrincipal: "spiffe://cluster.local/ns/default/sa/checkout",
	})
	fmt.Println(r.Protocol, r.Method, r.Path, r.Authority, r.Status, r.DurationMillis, r.Peer)
	// Output:
	// grpc POST /shop.Payments/Charge payments:8080 Unavailable 1.5 spiffe://cluster.local/ns/default/sa/checkout
}
