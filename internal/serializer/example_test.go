package serializer_test

import (
	"fmt"

	"mesh/internal/serializer"
)

func Example() {
	done := make(chan struct{})
	s := serializer.New(nil)
	for i := range 3 {
		s.Schedule(func() { fmt.Println("callback", i) })
	}
	s.Schedule(func() { close(done) })
	<-done
	s.Close()
	// Output:
	// callback 0
	// callback 1
	// callback 2
}
