package telemetry

import (
	"testing"
	"unsafe"
)

// TestRPCStateSizeClass keeps an RPC's state, allocated on both sides of
// every call, within the runtime's size classes on 64-bit platforms: a
// server RPC's rpcContext within 320 bytes, a client attempt's
// grpcClientCall within 480. A field more moves every call to the next
// class.
func TestRPCStateSizeClass(t *testing.T) {
	if unsafe.Sizeof(uintptr(0)) != 8 {
		t.Skip("size classes checked on 64-bit platforms")
	}
	if n := unsafe.Sizeof(rpcContext{}); n > 320 {
		t.Errorf("rpcContext is %d bytes, over the 320-byte size class", n)
	}
	if n := unsafe.Sizeof(grpcClientCall{}); n > 480 {
		t.Errorf("grpcClientCall is %d bytes, over the 480-byte size class", n)
	}
}
