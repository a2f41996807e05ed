package xdsclient

import (
	"fmt"
	"time"

	"google.golang.org/protobuf/types/known/anypb"

	routepb "mesh/xdsclient/internal/lite/envoy/config/route/v3"
	faultcommonpb "mesh/xdsclient/internal/lite/envoy/extensions/filters/common/fault/v3"
	faultpb "mesh/xdsclient/internal/lite/envoy/extensions/filters/http/fault/v3"
	typepb "mesh/xdsclient/internal/lite/envoy/type/v3"
)

// The fault filter (Envoy's, gRFC A33): the type URL of its config, and
// the headers that drive header-controlled faults.
const (
	TypeURLFault = typeURLFault

	FaultDelayHeader           = "x-envoy-fault-delay-request"
	FaultDelayPercentageHeader = "x-envoy-fault-delay-request-percentage"
	FaultAbortHTTPHeader       = "x-envoy-fault-abort-request"
	FaultAbortGRPCHeader       = "x-envoy-fault-abort-grpc-request"
	FaultAbortPercentageHeader = "x-envoy-fault-abort-request-percentage"
)

// FaultInjection is a decoded envoy.extensions.filters.http.fault.v3.HTTPFault
// (gRFC A33): the Config of a fault HTTPFilter, or a route's override of it
// in Route.FilterOverrides. It is immutable.
type FaultInjection struct {
	// Delay, when non-nil, delays matching requests.
	Delay *FaultDelay
	// Abort, when non-nil, fails matching requests without sending them.
	Abort *FaultAbort
	// MaxActiveFaults caps the faults (delays and aborts) in progress at
	// once; 0 means no cap.
	MaxActiveFaults uint32
}

// FaultDelay delays a share of requests.
type FaultDelay struct {
	// Fixed is the delay; unused when FromHeader is set.
	Fixed time.Duration
	// FromHeader takes the delay, in milliseconds, from the request header
	// FaultDelayHeader; requests without it are not delayed.
	FromHeader bool
	// PerMillion is the share of requests delayed; with FromHeader, the
	// header FaultDelayPercentageHeader may lower it (in the same
	// denominator as the config's percentage, see Denominator).
	PerMillion uint32
	// Denominator is the config percentage's denominator (100, 10000 or
	// 1000000), the unit of a percentage header.
	Denominator uint32
}

// FaultAbort fails a share of requests.
type FaultAbort struct {
	// Exactly one of GRPCStatus, HTTPStatus and FromHeader is set.
	// GRPCStatus is a gRPC status code (may be 0 only when HTTPStatus is set).
	GRPCStatus *uint32
	HTTPStatus uint32
	// FromHeader takes the status from FaultAbortGRPCHeader or
	// FaultAbortHTTPHeader; requests with neither are not aborted.
	FromHeader  bool
	PerMillion  uint32
	Denominator uint32
}

// decodeFault decodes an HTTPFault from a filter's typed_config or a
// route's typed_per_filter_config.
func decodeFault(a *anypb.Any, path string) (*FaultInjection, error) {
	pb := &faultpb.HTTPFault{}
	if err := unmarshalAny(a, pb); err != nil {
		return nil, fmt.Errorf("%s: cannot unmarshal %s: %w", path, a.GetTypeUrl(), err)
	}
	return faultInjection(pb, path)
}

func faultInjection(pb *faultpb.HTTPFault, path string) (*FaultInjection, error) {
	out := &FaultInjection{}
	if d := pb.GetDelay(); d != nil {
		dpath := path + ".delay"
		delay := &FaultDelay{}
		switch s := d.GetFaultDelaySecifier().(type) {
		case *faultcommonpb.FaultDelay_FixedDelay:
			fixed, err := nonNegativeDuration(s.FixedDelay, dpath+".fixed_delay")
			if err != nil {
				return nil, err
			}
			delay.Fixed = fixed
		case *faultcommonpb.FaultDelay_HeaderDelay_:
			delay.FromHeader = true
		default:
			return nil, fmt.Errorf("%s: fault_delay_secifier: missing (want fixed_delay or header_delay)", dpath)
		}
		var err error
		if delay.PerMillion, delay.Denominator, err = faultPercentage(d.GetPercentage(), dpath+".percentage"); err != nil {
			return nil, err
		}
		out.Delay = delay
	}
	if a := pb.GetAbort(); a != nil {
		apath := path + ".abort"
		abort := &FaultAbort{}
		switch s := a.GetErrorType().(type) {
		case *faultpb.FaultAbort_GrpcStatus:
			code := s.GrpcStatus
			if code > 16 {
				return nil, fmt.Errorf("%s.grpc_status: %d is not a gRPC status code", apath, code)
			}
			abort.GRPCStatus = &code
		case *faultpb.FaultAbort_HttpStatus:
			if s.HttpStatus < 200 || s.HttpStatus > 599 {
				return nil, fmt.Errorf("%s.http_status: %d is not in [200, 600)", apath, s.HttpStatus)
			}
			abort.HTTPStatus = s.HttpStatus
		case *faultpb.FaultAbort_HeaderAbort_:
			abort.FromHeader = true
		default:
			return nil, fmt.Errorf("%s: error_type: missing (want http_status, grpc_status or header_abort)", apath)
		}
		var err error
		if abort.PerMillion, abort.Denominator, err = faultPercentage(a.GetPercentage(), apath+".percentage"); err != nil {
			return nil, err
		}
		out.Abort = abort
	}
	if m := pb.GetMaxActiveFaults(); m != nil {
		out.MaxActiveFaults = m.GetValue()
		if out.MaxActiveFaults == 0 {
			// Envoy: 0 active faults allowed means no fault is ever injected.
			out.Delay, out.Abort = nil, nil
		}
	}
	return out, nil
}

// faultPercentage returns the share per million and the denominator of a
// fault percentage; an unset one is 0% (Envoy's default).
func faultPercentage(p *typepb.FractionalPercent, path string) (perMillion, denominator uint32, err error) {
	if p == nil {
		return 0, 100, nil
	}
	if perMillion, err = fractionPerMillion(p, path); err != nil {
		return 0, 0, err
	}
	switch p.GetDenominator() {
	case typepb.FractionalPercent_HUNDRED:
		denominator = 100
	case typepb.FractionalPercent_TEN_THOUSAND:
		denominator = 10_000
	default:
		denominator = 1_000_000
	}
	return perMillion, denominator, nil
}

// filterOverrides decodes a route's (or virtual host's) typed_per_filter_config
// for the filters mesh implements; other entries are skipped and reported
// as ignored.
func (dc *decodeContext) filterOverrides(m map[string]*anypb.Any, path string) (map[string]any, error) {
	var out map[string]any
	for name, a := range m {
		fpath := fmt.Sprintf("%s[%q]", path, name)
		if a.GetTypeUrl() == typeURLFilterConfig {
			fc := &routepb.FilterConfig{}
			if err := unmarshalAny(a, fc); err != nil {
				return nil, fmt.Errorf("%s: %w", fpath, err)
			}
			a = fc.GetConfig()
			fpath += ".config"
		}
		typeURL, err := filterTypeURL(a)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", fpath, err)
		}
		if typeURL != typeURLFault || a.GetTypeUrl() != typeURLFault {
			dc.ignore(fpath, fmt.Sprintf("per-route config of type %s skipped", typeURL))
			continue
		}
		f, err := decodeFault(a, fpath)
		if err != nil {
			return nil, err
		}
		if out == nil {
			out = map[string]any{}
		}
		out[name] = f
	}
	return out, nil
}

// typeURLFilterConfig wraps a per-route config with an is_optional flag.
const typeURLFilterConfig = "type.googleapis.com/envoy.config.route.v3.FilterConfig"

// mergeOverrides returns route's overrides over those of its virtual host.
func mergeOverrides(vh, route map[string]any) map[string]any {
	if len(vh) == 0 {
		return route
	}
	out := make(map[string]any, len(vh)+len(route))
	for k, v := range vh {
		out[k] = v
	}
	for k, v := range route {
		out[k] = v
	}
	return out
}
