package mesh_test

import (
	"testing"

	"mesh/internal/leakcheck"
)

// Every mesh, server, channel and control plane the tests start must be
// stopped by their cleanups.
func TestMain(m *testing.M) { leakcheck.Main(m, "mesh.", "mesh/", "google.golang.org/grpc") }
