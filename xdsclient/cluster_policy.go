package xdsclient

import (
	"fmt"
	"time"

	"google.golang.org/protobuf/types/known/wrapperspb"

	clusterpb "mesh/xdsclient/internal/lite/envoy/config/cluster/v3"
)

// Outlier detection defaults (gRFC A50, as in Envoy).
const (
	defaultOutlierInterval         = 10 * time.Second
	defaultOutlierBaseEjectionTime = 30 * time.Second
	defaultOutlierMaxEjectionTime  = 300 * time.Second
)

// OutlierDetection is a cluster's outlier_detection (gRFC A50): the
// success-rate and failure-percentage algorithms, as in gRPC, and Envoy's
// consecutive_5xx, which Istio's consecutive5xxErrors sets. It is
// immutable.
type OutlierDetection struct {
	Interval           time.Duration
	BaseEjectionTime   time.Duration
	MaxEjectionTime    time.Duration
	MaxEjectionPercent uint32
	// Consecutive5xx ejects an endpoint whose last Consecutive5xx requests
	// all failed (a non-OK gRPC status, an HTTP 5xx or no response), checked
	// every Interval rather than at once as Envoy does; 0 is off. Unlike
	// Envoy, an unset consecutive_5xx is off (gRPC ignores the field).
	Consecutive5xx uint32
	// Consecutive5xxEnforcement is enforcing_consecutive_5xx (default 100).
	Consecutive5xxEnforcement uint32
	// SuccessRate is nil when that algorithm is off.
	SuccessRate *SuccessRateEjection
	// FailurePercentage is nil when that algorithm is off.
	FailurePercentage *FailurePercentageEjection
}

// SuccessRateEjection ejects endpoints whose success rate is more than
// StdevFactor/1000 standard deviations below the mean.
type SuccessRateEjection struct {
	StdevFactor           uint32
	EnforcementPercentage uint32
	MinimumHosts          uint32
	RequestVolume         uint32
}

// FailurePercentageEjection ejects endpoints whose failure percentage is
// above Threshold.
type FailurePercentageEjection struct {
	Threshold             uint32
	EnforcementPercentage uint32
	MinimumHosts          uint32
	RequestVolume         uint32
}

// outlierDetection decodes a cluster's outlier_detection; nil in, nil out.
// As in gRPC, success-rate ejection is on when its enforcement percentage is
// unset or positive, and failure-percentage ejection only when it is set
// positive.
func outlierDetection(pb *clusterpb.OutlierDetection, path string) (*OutlierDetection, error) {
	if pb == nil {
		return nil, nil
	}
	od := &OutlierDetection{
		Interval:           defaultOutlierInterval,
		BaseEjectionTime:   defaultOutlierBaseEjectionTime,
		MaxEjectionTime:    defaultOutlierMaxEjectionTime,
		MaxEjectionPercent: 10,
	}
	for _, d := range []struct {
		field string
		in    interface{ AsDuration() time.Duration }
		out   *time.Duration
		set   bool
	}{
		{"interval", pb.GetInterval(), &od.Interval, pb.GetInterval() != nil},
		{"base_ejection_time", pb.GetBaseEjectionTime(), &od.BaseEjectionTime, pb.GetBaseEjectionTime() != nil},
		{"max_ejection_time", pb.GetMaxEjectionTime(), &od.MaxEjectionTime, pb.GetMaxEjectionTime() != nil},
	} {
		if !d.set {
			continue
		}
		v := d.in.AsDuration()
		if v <= 0 {
			return nil, fmt.Errorf("%s.%s: must be positive, got %v", path, d.field, v)
		}
		*d.out = v
	}
	if od.MaxEjectionTime < od.BaseEjectionTime {
		od.MaxEjectionTime = od.BaseEjectionTime
	}
	var err error
	if od.MaxEjectionPercent, err = percentValue(pb.GetMaxEjectionPercent(), 10, path+".max_ejection_percent"); err != nil {
		return nil, err
	}
	if c := pb.GetConsecutive_5Xx(); c != nil && c.GetValue() > 0 {
		od.Consecutive5xx = c.GetValue()
		if od.Consecutive5xxEnforcement, err = percentValue(pb.GetEnforcingConsecutive_5Xx(), 100, path+".enforcing_consecutive_5xx"); err != nil {
			return nil, err
		}
		if od.Consecutive5xxEnforcement == 0 {
			od.Consecutive5xx = 0
		}
	}
	srEnforce, err := percentValue(pb.GetEnforcingSuccessRate(), 100, path+".enforcing_success_rate")
	if err != nil {
		return nil, err
	}
	if srEnforce > 0 {
		od.SuccessRate = &SuccessRateEjection{
			StdevFactor:           uintValue(pb.GetSuccessRateStdevFactor(), 1900),
			EnforcementPercentage: srEnforce,
			MinimumHosts:          uintValue(pb.GetSuccessRateMinimumHosts(), 5),
			RequestVolume:         uintValue(pb.GetSuccessRateRequestVolume(), 100),
		}
	}
	fpEnforce, err := percentValue(pb.GetEnforcingFailurePercentage(), 0, path+".enforcing_failure_percentage")
	if err != nil {
		return nil, err
	}
	if fpEnforce > 0 {
		threshold, err := percentValue(pb.GetFailurePercentageThreshold(), 85, path+".failure_percentage_threshold")
		if err != nil {
			return nil, err
		}
		od.FailurePercentage = &FailurePercentageEjection{
			Threshold:             threshold,
			EnforcementPercentage: fpEnforce,
			MinimumHosts:          uintValue(pb.GetFailurePercentageMinimumHosts(), 5),
			RequestVolume:         uintValue(pb.GetFailurePercentageRequestVolume(), 50),
		}
	}
	return od, nil
}

func uintValue(v *wrapperspb.UInt32Value, def uint32) uint32 {
	if v == nil {
		return def
	}
	return v.GetValue()
}

func percentValue(v *wrapperspb.UInt32Value, def uint32, path string) (uint32, error) {
	if v == nil {
		return def, nil
	}
	if v.GetValue() > 100 {
		return 0, fmt.Errorf("%s: %d is above 100", path, v.GetValue())
	}
	return v.GetValue(), nil
}
