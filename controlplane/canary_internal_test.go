package controlplane

import (
	"context"
	"math"
	"os"
	"strings"
	"testing"
	"time"
)

func TestQuantileBound(t *testing.T) {
	// 100 calls: 90 within 5ms, 9 more within 50ms, 1 beyond 100ms.
	b := map[float64]float64{5: 90, 50: 99, 100: 99, math.Inf(1): 100}
	if got := quantileBound(b, 0.5); got != 5 {
		t.Errorf("p50 = %v, want 5", got)
	}
	if got := quantileBound(b, 0.99); got != 50 {
		t.Errorf("p99 = %v, want 50", got)
	}
	if got := quantileBound(b, 0.999); !math.IsInf(got, 1) {
		t.Errorf("p99.9 = %v, want +Inf (beyond the last bound)", got)
	}
	if got := quantileBound(map[float64]float64{}, 0.99); got != 0 {
		t.Errorf("no calls: %v, want 0", got)
	}
}

// TestWindowOfCounterReset: a workload that restarted between samples
// counts from zero, never negative.
func TestWindowOfCounterReset(t *testing.T) {
	key := "payments.default.svc.cluster.local|v2"
	agg := func(req, errs, total float64) edgeAgg {
		return edgeAgg{requests: req, errors: errs, buckets: map[float64]float64{10: total, math.Inf(1): total}}
	}
	base := []metricsSample{{target: "a", series: map[string]edgeAgg{key: agg(100, 1, 100)}}, {target: "b", series: map[string]edgeAgg{key: agg(50, 0, 50)}}}
	cur := []metricsSample{{target: "a", series: map[string]edgeAgg{key: agg(130, 4, 130)}}, {target: "b", series: map[string]edgeAgg{key: agg(5, 1, 5)}}}
	w := windowOf(base, cur, "payments.default.svc.cluster.local", "v2")
	if w.requests != 35 || w.errors != 4 || w.buckets[math.Inf(1)] != 35 {
		t.Errorf("window = %+v, want 30+5 requests, 3+1 errors", w)
	}
}

func TestParseCanaryErrorsNameTheField(t *testing.T) {
	for _, tc := range []struct{ doc, want string }{
		{"apiVersion: mesh/v1alpha1\nkind: Canary\nmetadata: {name: p}\nspec: {host: p, stable: v1, canary: v2, steps: [10, 5], interval: 1m}", "spec.steps[1] 5: steps must increase"},
		{"apiVersion: mesh/v1alpha1\nkind: Canary\nmetadata: {name: p}\nspec: {host: p, stable: v1, canary: v1, steps: [10], interval: 1m}", `spec.canary "v1": same subset as spec.stable`},
		{"apiVersion: mesh/v1alpha1\nkind: Canary\nmetadata: {name: p}\nspec: {host: p, stable: v1, canary: v2, steps: [10], interval: soon}", "spec.interval"},
		{"apiVersion: mesh/v1alpha1\nkind: Canary\nmetadata: {name: p}\nspec: {host: p, stable: v1, canary: v2, steps: [10], interval: 1m, maxP99: 5}", "spec.maxP99"},
		{"apiVersion: mesh/v1alpha1\nkind: Canary\nmetadata: {name: p}\nspec: {host: p, stable: v1, canary: v2, steps: [10], interval: 1m, typo: 1}", "typo"},
		{"apiVersion: mesh/v2\nkind: Canary\nmetadata: {name: p}\nspec: {host: p}", `apiVersion "mesh/v2"`},
	} {
		_, _, err := splitCanaries([]byte(tc.doc))
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s:\n got %v, want an error naming %q", tc.doc, err, tc.want)
		}
	}
	_, cs, err := splitCanaries([]byte("apiVersion: mesh/v1alpha1\nkind: Canary\nmetadata: {name: p, namespace: shop}\nspec: {host: payments, stable: v1, canary: v2, steps: [10, 100], interval: 30s, maxP99: 250ms}"))
	if err != nil || len(cs) != 1 {
		t.Fatalf("valid Canary: %v, %v", cs, err)
	}
	if c := cs[0]; c.Host != "payments.shop.svc.cluster.local" || c.Interval != 30*time.Second || c.MaxP99 != 250*time.Millisecond || c.MinSuccessRate != 0.99 || c.MinRequests != 10 {
		t.Errorf("valid Canary parsed as %+v", c)
	}
}

// TestAnalysisWaitsThenRollsBackOnP99: an interval with too few canary
// calls waits without stepping; one whose p99 breaches the threshold sets
// the canary's weight to 0 and says why. Metrics are fed by hand.
func TestAnalysisWaitsThenRollsBackOnP99(t *testing.T) {
	ctx := t.Context()
	tmp := t.TempDir()
	cfg := tmp + "/cfg"
	if err := mkdirWrite(cfg, "mesh.yaml", `apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: payments}
spec:
  host: payments
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: payments}
spec:
  hosts: [payments]
  http:
  - route:
    - destination: {host: payments, subset: v1}
`); err != nil {
		t.Fatal(err)
	}
	w := func(v string) Workload {
		return Workload{Name: "payments-" + v, Service: "payments", Port: 8080, Labels: map[string]string{"version": v}}
	}
	d, err := NewDaemon(ctx, DaemonConfig{ConfigDir: cfg, StateDir: tmp + "/state", APIAddress: "127.0.0.1:0"}, WithWorkloads(w("v1"), w("v2")))
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	const key = "payments.default.svc.cluster.local|v2"
	var next []metricsSample
	d.metricsFunc = func(context.Context) []metricsSample { return next }
	sample := func(requests, slow float64) []metricsSample {
		return []metricsSample{{target: "v2", series: map[string]edgeAgg{key: {requests: requests,
			buckets: map[float64]float64{100: requests - slow, 1000: requests, math.Inf(1): requests}}}}}
	}
	next = sample(0, 0)
	spec := Canary{Host: "payments", Stable: "v1", Canary: "v2", Steps: []int{10, 50, 100}, Interval: time.Hour,
		MinSuccessRate: 0.99, MaxP99: 200 * time.Millisecond, MinRequests: 10}
	if err := d.StartAnalysis(ctx, spec); err != nil {
		t.Fatal(err)
	}
	next = sample(5, 0)
	if ev, done := d.AnalyzeNow(ctx, "payments"); done || ev.Verdict != "wait" {
		t.Fatalf("5 calls: %+v done=%v, want wait", ev, done)
	}
	next = sample(105, 5) // 100 more calls, 5 of them slower than 100ms: p99 in the 1000ms bucket
	ev, done := d.AnalyzeNow(ctx, "payments")
	if !done || ev.Verdict != "rollback" || !strings.Contains(ev.Message, "p99 1000ms above 200ms") {
		t.Fatalf("slow interval: %+v done=%v, want a p99 rollback", ev, done)
	}
	st, err := d.CanaryStatus("payments")
	if err != nil {
		t.Fatal(err)
	}
	if st.Weights["v1"] != 100 || st.Weights["v2"] != 0 || st.Analysis.Phase != PhaseRolledBack || len(st.Analysis.History) != 2 {
		t.Errorf("after the rollback: weights %v, analysis %+v", st.Weights, st.Analysis)
	}
}

func mkdirWrite(dir, name, data string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	return os.WriteFile(dir+"/"+name, []byte(data), 0o644)
}
