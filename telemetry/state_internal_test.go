package telemetry

import (
	"testing"
	"unsafe"
)

// TestRPCStateSizeClass keeps an RPC's state, allocated twice per call
// (client and server), within the runtime's 480-byte size class on 64-bit
// platforms: a field more moves every call to the next class.
func TestRPCStateSizeClass(t *testing.T) {
	if unsafe.Sizeof(uintptr(0)) != 8 {
		t.Skip("size classes checked on 64-bit platforms")
	}
	if n := unsafe.Sizeof(rpcContext{}); n > 480 {
		t.Errorf("rpcContext is %d bytes, over the 480-byte size class", n)
	}
}
