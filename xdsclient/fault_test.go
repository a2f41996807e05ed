package xdsclient

import (
	"strings"
	"testing"
	"time"

	clusterpb "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	routepb "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	faultcommonpb "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/common/fault/v3"
	faultpb "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/http/fault/v3"
	hcmpb "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	typepb "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/protobuf/types/known/anypb"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/wrapperspb"
)

func percent(n uint32) *typepb.FractionalPercent {
	return &typepb.FractionalPercent{Numerator: n, Denominator: typepb.FractionalPercent_HUNDRED}
}

func TestDecodeFaultFilterAndRouteOverride(t *testing.T) {
	dc := testDecodeContext()
	hcm := rdsHCM(t)
	listenerFault := &faultpb.HTTPFault{
		Delay: &faultcommonpb.FaultDelay{
			FaultDelaySecifier: &faultcommonpb.FaultDelay_HeaderDelay_{HeaderDelay: &faultcommonpb.FaultDelay_HeaderDelay{}},
			Percentage:         percent(50),
		},
		Abort:           &faultpb.FaultAbort{ErrorType: &faultpb.FaultAbort_HeaderAbort_{HeaderAbort: &faultpb.FaultAbort_HeaderAbort{}}, Percentage: percent(100)},
		MaxActiveFaults: wrapperspb.UInt32(7),
	}
	hcm.HttpFilters = append([]*hcmpb.HttpFilter{{Name: "envoy.filters.http.fault",
		ConfigType: &hcmpb.HttpFilter_TypedConfig{TypedConfig: mustAny(t, listenerFault)}}}, hcm.HttpFilters...)
	_, l, err := dc.decodeListener(mustAny(t, apiListener(t, hcm)))
	if err != nil {
		t.Fatal(err)
	}
	f, ok := l.HTTP.HTTPFilters[0].Config.(*FaultInjection)
	if !ok {
		t.Fatalf("fault filter config = %T, want *FaultInjection", l.HTTP.HTTPFilters[0].Config)
	}
	if !f.Delay.FromHeader || f.Delay.PerMillion != 500_000 || f.Delay.Denominator != 100 || !f.Abort.FromHeader || f.Abort.PerMillion != 1_000_000 || f.MaxActiveFaults != 7 {
		t.Errorf("decoded fault = %+v delay %+v abort %+v", f, f.Delay, f.Abort)
	}

	r := clusterRoute("a")
	r.TypedPerFilterConfig = map[string]*anypb.Any{
		"envoy.filters.http.fault": mustAny(t, &faultpb.HTTPFault{
			Delay: &faultcommonpb.FaultDelay{FaultDelaySecifier: &faultcommonpb.FaultDelay_FixedDelay{FixedDelay: durationpb.New(2 * time.Second)}, Percentage: percent(100)},
			Abort: &faultpb.FaultAbort{ErrorType: &faultpb.FaultAbort_GrpcStatus{GrpcStatus: 14}, Percentage: percent(25)},
		}),
		"other": mustAny(t, &routepb.RetryPolicy{}),
	}
	rc := routeConfig(r)
	rc.VirtualHosts[0].TypedPerFilterConfig = map[string]*anypb.Any{
		"vh-fault": mustAny(t, &faultpb.HTTPFault{Abort: &faultpb.FaultAbort{ErrorType: &faultpb.FaultAbort_HttpStatus{HttpStatus: 503}}}),
	}
	_, got, err := dc.decodeRouteConfig(mustAny(t, rc))
	if err != nil {
		t.Fatal(err)
	}
	overrides := got.VirtualHosts[0].Routes[0].FilterOverrides
	rf, ok := overrides["envoy.filters.http.fault"].(*FaultInjection)
	if !ok || rf.Delay.Fixed != 2*time.Second || *rf.Abort.GRPCStatus != 14 || rf.Abort.PerMillion != 250_000 {
		t.Fatalf("route override = %#v", overrides["envoy.filters.http.fault"])
	}
	if vf, ok := overrides["vh-fault"].(*FaultInjection); !ok || vf.Abort.HTTPStatus != 503 || vf.Abort.PerMillion != 0 {
		t.Errorf("virtual host override = %#v", overrides["vh-fault"])
	}
	if _, ok := overrides["other"]; ok {
		t.Error("an override of an unknown type was kept")
	}
}

func TestDecodeFaultErrorsNameTheField(t *testing.T) {
	for _, tc := range []struct {
		name  string
		fault *faultpb.HTTPFault
		want  string
	}{
		{"grpc status", &faultpb.HTTPFault{Abort: &faultpb.FaultAbort{ErrorType: &faultpb.FaultAbort_GrpcStatus{GrpcStatus: 17}}}, "abort.grpc_status: 17"},
		{"http status", &faultpb.HTTPFault{Abort: &faultpb.FaultAbort{ErrorType: &faultpb.FaultAbort_HttpStatus{HttpStatus: 99}}}, "abort.http_status: 99"},
		{"no error type", &faultpb.HTTPFault{Abort: &faultpb.FaultAbort{}}, "abort: error_type: missing"},
		{"no delay", &faultpb.HTTPFault{Delay: &faultcommonpb.FaultDelay{}}, "delay: fault_delay_secifier: missing"},
		{"negative delay", &faultpb.HTTPFault{Delay: &faultcommonpb.FaultDelay{FaultDelaySecifier: &faultcommonpb.FaultDelay_FixedDelay{FixedDelay: &durationpb.Duration{Seconds: -1}}}}, "delay.fixed_delay"},
		{"denominator", &faultpb.HTTPFault{Abort: &faultpb.FaultAbort{ErrorType: &faultpb.FaultAbort_HttpStatus{HttpStatus: 503}, Percentage: &typepb.FractionalPercent{Numerator: 1, Denominator: 9}}}, "abort.percentage.denominator"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := clusterRoute("a")
			r.TypedPerFilterConfig = map[string]*anypb.Any{"fault": mustAny(t, tc.fault)}
			_, _, err := testDecodeContext().decodeRouteConfig(mustAny(t, routeConfig(r)))
			if err == nil || !strings.Contains(err.Error(), `typed_per_filter_config["fault"]`) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("error = %v, want one naming the route's typed_per_filter_config and %q", err, tc.want)
			}
		})
	}
}

func TestDecodeOutlierDetection(t *testing.T) {
	c := edsCluster()
	c.OutlierDetection = &clusterpb.OutlierDetection{
		Interval:                       durationpb.New(time.Second),
		BaseEjectionTime:               durationpb.New(5 * time.Second),
		MaxEjectionPercent:             wrapperspb.UInt32(50),
		EnforcingSuccessRate:           wrapperspb.UInt32(0),
		EnforcingFailurePercentage:     wrapperspb.UInt32(100),
		FailurePercentageThreshold:     wrapperspb.UInt32(40),
		FailurePercentageMinimumHosts:  wrapperspb.UInt32(2),
		FailurePercentageRequestVolume: wrapperspb.UInt32(10),
	}
	_, got, err := testDecodeContext().decodeCluster(mustAny(t, c))
	if err != nil {
		t.Fatal(err)
	}
	od := got.OutlierDetection
	want := OutlierDetection{Interval: time.Second, BaseEjectionTime: 5 * time.Second, MaxEjectionTime: defaultOutlierMaxEjectionTime, MaxEjectionPercent: 50,
		FailurePercentage: &FailurePercentageEjection{Threshold: 40, EnforcementPercentage: 100, MinimumHosts: 2, RequestVolume: 10}}
	if od == nil || od.Interval != want.Interval || od.BaseEjectionTime != want.BaseEjectionTime || od.MaxEjectionTime != want.MaxEjectionTime ||
		od.MaxEjectionPercent != 50 || od.SuccessRate != nil || *od.FailurePercentage != *want.FailurePercentage {
		t.Errorf("outlier detection = %+v (failure percentage %+v)", od, od.FailurePercentage)
	}

	// istiod's default shape: success rate on with Envoy's defaults.
	c.OutlierDetection = &clusterpb.OutlierDetection{}
	_, got, err = testDecodeContext().decodeCluster(mustAny(t, c))
	if err != nil {
		t.Fatal(err)
	}
	if sr := got.OutlierDetection.SuccessRate; sr == nil || sr.StdevFactor != 1900 || sr.MinimumHosts != 5 || sr.RequestVolume != 100 || got.OutlierDetection.FailurePercentage != nil {
		t.Errorf("default outlier detection = %+v", got.OutlierDetection)
	}

	// Istio's consecutive5xxErrors, as istiod writes it.
	c.OutlierDetection = &clusterpb.OutlierDetection{Consecutive_5Xx: wrapperspb.UInt32(3), EnforcingConsecutive_5Xx: wrapperspb.UInt32(100), EnforcingSuccessRate: wrapperspb.UInt32(0)}
	_, got, err = testDecodeContext().decodeCluster(mustAny(t, c))
	if err != nil {
		t.Fatal(err)
	}
	if od := got.OutlierDetection; od.Consecutive5xx != 3 || od.Consecutive5xxEnforcement != 100 || od.SuccessRate != nil {
		t.Errorf("consecutive 5xx outlier detection = %+v", od)
	}

	c.OutlierDetection = &clusterpb.OutlierDetection{MaxEjectionPercent: wrapperspb.UInt32(101)}
	if _, _, err := testDecodeContext().decodeCluster(mustAny(t, c)); err == nil || !strings.Contains(err.Error(), "outlier_detection.max_ejection_percent") {
		t.Errorf("error = %v, want one naming outlier_detection.max_ejection_percent", err)
	}
	c.OutlierDetection = &clusterpb.OutlierDetection{Interval: &durationpb.Duration{}}
	if _, _, err := testDecodeContext().decodeCluster(mustAny(t, c)); err == nil || !strings.Contains(err.Error(), "outlier_detection.interval") {
		t.Errorf("error = %v, want one naming outlier_detection.interval", err)
	}
}
