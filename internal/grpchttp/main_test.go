package grpchttp_test

import (
	"testing"

	"mesh/internal/leakcheck"
)

// Every server, stream, watcher and goroutine a test starts is stopped by
// its cleanup.
func TestMain(m *testing.M) { leakcheck.Main(m) }
