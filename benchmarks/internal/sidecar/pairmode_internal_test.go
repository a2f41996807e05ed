package sidecar

import (
	"context"
	"net"
	"testing"
	"time"
)

// TestCheckPairModeFailsOnSilence: a sidecar that accepts but never answers
// the HTTP/2 preface fails the check once the hang guard passes, rather than
// stalling the run.
func TestCheckPairModeFailsOnSilence(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		if c, err := lis.Accept(); err == nil {
			accepted <- c // held open, never written to
		}
	}()
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	for _, http := range []bool{false, true} {
		if err := checkPairMode(ctx, lis.Addr().String(), http); err == nil {
			t.Errorf("http=%v: a silent sidecar passed the mode check", http)
		}
	}
	select {
	case c := <-accepted:
		c.Close()
	default:
	}
}
