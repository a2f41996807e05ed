package main

import (
	"testing"

	"mesh/internal/leakcheck"
)

// The demo stops everything it starts.
func TestMain(m *testing.M) { leakcheck.Main(m) }
