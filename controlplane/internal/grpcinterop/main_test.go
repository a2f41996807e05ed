package grpcinterop

import (
	"testing"

	"mesh/internal/leakcheck"
)

// Every control plane the tests start is stopped by their cleanups. Only
// mesh's goroutines are checked: grpc-go's xDS client pool is grpc-go's
// to stop.
func TestMain(m *testing.M) { leakcheck.Main(m, "\nmesh/", "\nmesh.", "created by mesh") }
