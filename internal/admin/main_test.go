package admin_test

import (
	"testing"

	"mesh/internal/leakcheck"
)

// Scrapers and handlers leave no goroutine behind.
func TestMain(m *testing.M) { leakcheck.Main(m, "mesh/") }
