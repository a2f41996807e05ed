// Package grpchttp holds what gRPC's HTTP mapping says, for the places
// that speak gRPC over plain HTTP/2 or turn HTTP answers into gRPC ones:
// the xDS client's ADS stream and the balancer's fault injection.
package grpchttp

import (
	"net/http"

	"google.golang.org/grpc/codes"
)

// CodeFromHTTPStatus maps an HTTP status that is not 200 to the gRPC code
// a gRPC client reports for it (gRPC's "HTTP to gRPC Status Code Mapping").
func CodeFromHTTPStatus(status int) codes.Code {
	switch status {
	case http.StatusBadRequest:
		return codes.Internal
	case http.StatusUnauthorized:
		return codes.Unauthenticated
	case http.StatusForbidden:
		return codes.PermissionDenied
	case http.StatusNotFound:
		return codes.Unimplemented
	case http.StatusTooManyRequests, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return codes.Unavailable
	}
	return codes.Unknown
}
