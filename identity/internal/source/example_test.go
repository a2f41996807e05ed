package source_test

import (
	"fmt"

	"mesh/identity/internal/source"
)

// Waiters take the channel first, so no update after that can be missed.
func ExampleNotifier() {
	n := source.NewNotifier()
	updated := n.Updated()
	n.Notify()
	<-updated
	n.Close()
	<-n.Updated() // a closed notifier never blocks anyone
	fmt.Println("woken twice")
	// Output: woken twice
}
