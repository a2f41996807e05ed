// Package leakcheck fails a test binary whose goroutines outlive its tests:
// every server, stream and watcher a test starts must be stopped by its
// cleanup, and this is how the suite proves it.
//
//	func TestMain(m *testing.M) { leakcheck.Main(m) }
package leakcheck

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"
)

// Grace is how long goroutines get to finish closing after the tests end;
// many stop asynchronously after Close returns.
const Grace = time.Minute

// Ours lists the goroutines Main checks by default: mesh's own, by the
// function names that open a stack line or start it ("mesh/..." and the
// root package's "mesh."; other modules have packages named mesh too), and
// those of the gRPC and go-control-plane servers and channels the tests
// start.
func Ours() []string {
	return []string{"\nmesh/", "\nmesh.", "created by mesh", "google.golang.org/grpc", "github.com/envoyproxy/go-control-plane"}
}

// Main runs the tests, then fails the binary if goroutines whose stacks
// mention any of the given substrings (by default, [Ours]) are still
// running after Grace.
func Main(m *testing.M, substrings ...string) {
	if len(substrings) == 0 {
		substrings = Ours()
	}
	code := m.Run()
	if code == 0 {
		if err := Wait(Grace, substrings...); err != nil {
			fmt.Fprintln(os.Stderr, err)
			code = 1
		}
	}
	os.Exit(code)
}

// Wait polls until no goroutine's stack mentions any of substrings, or
// returns an error listing those that remain after limit.
func Wait(limit time.Duration, substrings ...string) error {
	deadline := time.Now().Add(limit)
	for {
		leaked := Find(substrings...)
		if len(leaked) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("leakcheck: %d goroutines outlived the tests:\n\n%s", len(leaked), strings.Join(leaked, "\n\n"))
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Find returns the stacks of other goroutines that mention any of substrings.
func Find(substrings ...string) []string {
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
	// The first stack is the calling goroutine's own.
	for _, g := range strings.Split(string(buf), "\n\n")[1:] {
		if strings.Contains(g, "mesh/internal/leakcheck.") {
			continue
		}
		for _, s := range substrings {
			if strings.Contains(g, s) {
				leaked = append(leaked, g)
				break
			}
		}
	}
	return leaked
}

// Check fails t if, once its other cleanups have run, goroutines whose
// stacks mention any of substrings (by default, [Ours]) are still running
// after Grace. Call it first in a test, so that its cleanup runs last; it
// names the test that leaked, where Main only fails the binary.
func Check(t testing.TB, substrings ...string) {
	t.Helper()
	if len(substrings) == 0 {
		substrings = Ours()
	}
	t.Cleanup(func() {
		if err := Wait(Grace, substrings...); err != nil {
			t.Error(err)
		}
	})
}
