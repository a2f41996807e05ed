package leakcheck_test

import (
	"fmt"
	"time"

	"mesh/internal/leakcheck"
)

// A goroutine that is stopped before the check is not a leak.
func ExampleWait() {
	stop := make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		<-stop
	}()
	close(stop)
	<-done
	fmt.Println(leakcheck.Wait(time.Second, "mesh/internal/leakcheck_test.ExampleWait"))
	// Output: <nil>
}
