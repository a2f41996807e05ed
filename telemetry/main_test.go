package telemetry_test

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"
)

// TestMain fails the run if gRPC goroutines outlive the tests: every server
// and connection a test starts must be stopped by its cleanup.
func TestMain(m *testing.M) {
	code := m.Run()
	if code == 0 {
		if err := waitForGRPCGoroutinesToExit(10 * time.Second); err != nil {
			fmt.Fprintln(os.Stderr, err)
			code = 1
		}
	}
	os.Exit(code)
}

func waitForGRPCGoroutinesToExit(limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for {
		leaked := grpcGoroutines()
		if len(leaked) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d goroutines leaked:\n\n%s", len(leaked), strings.Join(leaked, "\n\n"))
		}
		time.Sleep(10 * time.Millisecond) // goroutines finish closing asynchronously
	}
}

func grpcGoroutines() []string {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	var leaked []string
	// The first stack is this goroutine's own.
	for _, g := range strings.Split(string(buf), "\n\n")[1:] {
		if strings.Contains(g, "google.golang.org/grpc") || strings.Contains(g, "mesh/telemetry") {
			leaked = append(leaked, g)
		}
	}
	return leaked
}
