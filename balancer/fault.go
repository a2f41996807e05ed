package balancer

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"mesh/internal/grpchttp"
	"mesh/xdsclient"
)

// ErrFaultInjected is wrapped by the error of a request that a fault filter
// aborted (gRFC A33); gRPC RPCs fail with the configured status instead.
var ErrFaultInjected = errors.New("fault injected")

// faultFilter is one fault HTTP filter of the listener, in chain order.
type faultFilter struct {
	name   string
	config *xdsclient.FaultInjection
}

// faultFilters picks the fault filters out of a listener's filter chain.
func faultFilters(filters []xdsclient.HTTPFilter) []faultFilter {
	var out []faultFilter
	for _, f := range filters {
		if cfg, ok := f.Config.(*xdsclient.FaultInjection); ok {
			out = append(out, faultFilter{name: f.Name, config: cfg})
		}
	}
	return out
}

// faultsReadHeaders reports whether any fault config r may apply is
// header-driven, so that requests' headers must be collected for it.
func faultsReadHeaders(r *Router) bool {
	reads := func(cfg *xdsclient.FaultInjection) bool {
		return cfg != nil && (cfg.Delay != nil && cfg.Delay.FromHeader || cfg.Abort != nil && cfg.Abort.FromHeader)
	}
	for _, f := range r.faults {
		if reads(f.config) {
			return true
		}
		for _, cr := range r.routes {
			if o, ok := cr.route.FilterOverrides[f.name].(*xdsclient.FaultInjection); ok && reads(o) {
				return true
			}
		}
	}
	return false
}

// faultConfig returns the config filter f applies to route: the route's
// override, or else the filter's own.
func (f *faultFilter) faultConfig(route *xdsclient.Route) *xdsclient.FaultInjection {
	if o, ok := route.FilterOverrides[f.name].(*xdsclient.FaultInjection); ok {
		return o
	}
	return f.config
}

// faultInjector applies fault filters for one owner (a resolver builder or
// a RoundTripper); active counts its faults in progress, for
// max_active_faults.
type faultInjector struct {
	clock  timeSource
	active atomic.Int64
}

// faultAbort is what an aborted request fails with.
type faultAbort struct {
	grpcCode   codes.Code
	httpStatus int
}

// inject runs the fault filters of router on a request that matched route:
// it waits out any delay (or ctx's end) and reports an abort, if any.
// release must be called when the request ends; it is never nil.
func (fi *faultInjector) inject(ctx context.Context, router *Router, route *xdsclient.Route, headers Headers, grpcRequest bool) (abort *faultAbort, release func(), err error) {
	release = noRelease
	if len(router.faults) == 0 || route == nil {
		return nil, release, nil
	}
	// The release closure is made only once a fault is active: a route
	// without one (the common case) allocates nothing.
	held := int64(0)
	defer func() {
		if held > 0 {
			release = fi.releaser(held)
		}
	}()
	for i := range router.faults {
		cfg := router.faults[i].faultConfig(route)
		if cfg == nil {
			continue
		}
		delay, delayed := chooseDelay(cfg.Delay, headers)
		ab := chooseAbort(cfg.Abort, headers, grpcRequest)
		if !delayed && ab == nil {
			continue
		}
		if !fi.take(cfg.MaxActiveFaults) {
			continue
		}
		held++
		if delayed {
			if err := sleepClock(ctx, fi.clock, delay); err != nil {
				return nil, release, err
			}
		}
		if ab != nil {
			return ab, release, nil
		}
	}
	return nil, release, nil
}

func noRelease() {}

// releaser returns a release function that gives back n active faults,
// once however often it is called.
func (fi *faultInjector) releaser(n int64) func() {
	var once sync.Once
	return func() { once.Do(func() { fi.active.Add(-n) }) }
}

// take counts one more active fault unless limit (0: none) is reached.
func (fi *faultInjector) take(limit uint32) bool {
	n := fi.active.Add(1)
	if limit > 0 && n > int64(limit) {
		fi.active.Add(-1)
		return false
	}
	return true
}

// chooseDelay decides whether a request is delayed, and by how much.
func chooseDelay(d *xdsclient.FaultDelay, headers Headers) (time.Duration, bool) {
	if d == nil {
		return 0, false
	}
	delay := d.Fixed
	if d.FromHeader {
		v := firstHeader(headers, xdsclient.FaultDelayHeader)
		ms, err := strconv.ParseUint(v, 10, 32)
		if v == "" || err != nil {
			return 0, false
		}
		delay = time.Duration(ms) * time.Millisecond
	}
	return delay, lucky(d.PerMillion, d.Denominator, d.FromHeader, headers, xdsclient.FaultDelayPercentageHeader)
}

// chooseAbort decides whether a request is aborted, and with what.
func chooseAbort(a *xdsclient.FaultAbort, headers Headers, grpcRequest bool) *faultAbort {
	if a == nil {
		return nil
	}
	var out faultAbort
	switch {
	case a.FromHeader:
		grpcValue := firstHeader(headers, xdsclient.FaultAbortGRPCHeader)
		httpValue := firstHeader(headers, xdsclient.FaultAbortHTTPHeader)
		if code, err := strconv.ParseUint(grpcValue, 10, 32); grpcValue != "" && err == nil && code <= 16 && (grpcRequest || httpValue == "") {
			out.grpcCode, out.httpStatus = codes.Code(code), grpcToHTTPStatus(codes.Code(code))
		} else if st, err := strconv.ParseUint(httpValue, 10, 32); httpValue != "" && err == nil && st >= 200 && st < 600 {
			out.httpStatus, out.grpcCode = int(st), grpchttp.CodeFromHTTPStatus(int(st))
		} else {
			return nil
		}
	case a.GRPCStatus != nil:
		out.grpcCode, out.httpStatus = codes.Code(*a.GRPCStatus), grpcToHTTPStatus(codes.Code(*a.GRPCStatus))
	default:
		out.httpStatus, out.grpcCode = int(a.HTTPStatus), grpchttp.CodeFromHTTPStatus(int(a.HTTPStatus))
	}
	if !lucky(a.PerMillion, a.Denominator, a.FromHeader, headers, xdsclient.FaultAbortPercentageHeader) {
		return nil
	}
	return &out
}

// lucky draws whether a fault with share perMillion applies; a
// header-driven fault's percentage header may lower the share (its value is
// a numerator over the config's denominator).
func lucky(perMillion, denominator uint32, fromHeader bool, headers Headers, percentageHeader string) bool {
	if fromHeader && denominator > 0 {
		if v := firstHeader(headers, percentageHeader); v != "" {
			if n, err := strconv.ParseUint(v, 10, 32); err == nil {
				perMillion = uint32(min(uint64(perMillion), n*uint64(1_000_000/denominator)))
			}
		}
	}
	switch {
	case perMillion == 0:
		return false
	case perMillion >= 1_000_000:
		return true
	}
	return rand.Uint32N(1_000_000) < perMillion
}

func firstHeader(headers Headers, name string) string {
	if headers == nil {
		return ""
	}
	if v := headers.Values(name); len(v) > 0 {
		return v[0]
	}
	return ""
}

// grpcStatus is the status an aborted RPC fails with.
func (a *faultAbort) grpcStatus() error {
	return status.Error(a.grpcCode, fmt.Sprintf("%v: abort with status %d", ErrFaultInjected, a.grpcCode))
}

// httpResponse is the response an aborted HTTP request gets, with the
// gRPC status in grpc-status as Envoy's local replies carry it.
func (a *faultAbort) httpResponse(req *http.Request) *http.Response {
	h := http.Header{}
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("Grpc-Status", strconv.Itoa(int(a.grpcCode)))
	h.Set("X-Mesh-Fault", "abort")
	return &http.Response{
		Status:        strconv.Itoa(a.httpStatus) + " " + http.StatusText(a.httpStatus),
		StatusCode:    a.httpStatus,
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        h,
		Body:          http.NoBody,
		ContentLength: 0,
		Request:       req,
	}
}

// grpcToHTTPStatus maps a gRPC code to the closest HTTP status, for HTTP
// requests aborted with a gRPC status.
func grpcToHTTPStatus(c codes.Code) int {
	switch c {
	case codes.OK:
		return http.StatusOK
	case codes.InvalidArgument, codes.FailedPrecondition, codes.OutOfRange:
		return http.StatusBadRequest
	case codes.Unauthenticated:
		return http.StatusUnauthorized
	case codes.PermissionDenied:
		return http.StatusForbidden
	case codes.NotFound, codes.Unimplemented:
		return http.StatusNotFound
	case codes.AlreadyExists, codes.Aborted:
		return http.StatusConflict
	case codes.ResourceExhausted:
		return http.StatusTooManyRequests
	case codes.Canceled:
		return 499
	case codes.DeadlineExceeded:
		return http.StatusGatewayTimeout
	case codes.Unavailable:
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}
