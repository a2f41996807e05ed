package shop_test

import (
	"errors"
	"fmt"

	"mesh/examples/shop"
)

// A Tally counts which version answered each call.
func ExampleTally() {
	var t shop.Tally
	for range 9 {
		t.Add(shop.Reply{Version: "v1"}, nil)
	}
	t.Add(shop.Reply{Version: "v2"}, nil)
	t.Add(shop.Reply{}, errors.New("unavailable"))
	fmt.Println(t.String())
	// Output: v1 9 (81.8%)  v2 1 (9.1%)  failed 1
}
