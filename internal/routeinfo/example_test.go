package routeinfo_test

import (
	"context"
	"fmt"

	"mesh/internal/routeinfo"
)

// Telemetry puts an empty slot in the request's context; the picker fills
// it with the Info it prebuilt for the endpoint it chose.
func ExampleSet() {
	slot := &routeinfo.Slot{}
	ctx := routeinfo.WithSlot(context.Background(), slot)

	chosen := routeinfo.New("outbound|8080|v2|payments.default.svc.cluster.local", "10.0.0.7:8080")
	routeinfo.Set(ctx, chosen)

	got := slot.Load()
	fmt.Println(got.Subset, got.Endpoint)
	fmt.Println(routeinfo.Set(context.Background(), chosen)) // no slot: nothing recorded
	// Output:
	// v2 10.0.0.7:8080
	// false
}
