package telemetry

import "testing"

func TestRewriteBucketBounds(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{`h_bucket{a="x",le="1.8e+06"} 3`, `h_bucket{a="x",le="1800000"} 3`},
		{`h_bucket{le="3.6e+06"} 1` + "\n" + `h_bucket{le="+Inf"} 1`, `h_bucket{le="3600000"} 1` + "\n" + `h_bucket{le="+Inf"} 1`},
		{`h_bucket{le="0.5"} 0`, `h_bucket{le="0.5"} 0`},
		{`x{sample="1e+06"} 1`, `x{sample="1e+06"} 1`}, // not an le label
		{`up 1`, `up 1`},
		{`broken{le="1e+06`, `broken{le="1e+06`},
	} {
		if got := string(rewriteBucketBounds([]byte(c.in))); got != c.want {
			t.Errorf("rewriteBucketBounds(%q) = %q, want %q", c.in, got, c.want)
		}
	}
}
