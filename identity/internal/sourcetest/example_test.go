package sourcetest_test

import (
	"fmt"
	"testing"

	"mesh/identity/internal/sourcetest"
	"mesh/internal/testutil"
)

// A test waits for a signal with the test's hang guard.
func ExampleWaitClosed() {
	t := &testing.T{}
	ch := make(chan struct{})
	close(ch)
	sourcetest.WaitClosed(testutil.Context(t), t, ch, "the signal")
	fmt.Println("closed")

}
