package shop_test

import (
	"fmt"

	"mesh/internal/shop"
)

// The helpers forward to the example code in mesh/examples/shop.
func ExampleWebYAML() {
	fmt.Println(len(shop.WebYAML(90, 10)) > 0)
	// Output: true
}
