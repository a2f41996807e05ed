package serializer_test

import (
	"testing"

	"mesh/internal/leakcheck"
)

// Every goroutine a test starts is stopped by its cleanup.
func TestMain(m *testing.M) { leakcheck.Main(m) }
