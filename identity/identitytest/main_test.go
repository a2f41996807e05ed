package identitytest_test

import (
	"testing"

	"mesh/internal/leakcheck"
)

func TestMain(m *testing.M) {
	leakcheck.Main(m, "mesh/", "google.golang.org/grpc")
}
