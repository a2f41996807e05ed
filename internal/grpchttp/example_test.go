package grpchttp_test

import (
	"fmt"
	"net/http"

	"mesh/internal/grpchttp"
)

func ExampleCodeFromHTTPStatus() {
	for _, status := range []int{http.StatusServiceUnavailable, http.StatusNotFound, http.StatusTeapot} {
		fmt.Println(status, grpchttp.CodeFromHTTPStatus(status))
	}
	// Output:
	// 503 Unavailable
	// 404 Unimplemented
	// 418 Unknown
}
