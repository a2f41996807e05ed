package telemetry

import (
	"bytes"
	"net/http"
	"strconv"
	"strings"
)

// EnvoyBucketLabels wraps a Prometheus /metrics handler (such as promhttp's
// over the OpenTelemetry Prometheus exporter) so that histogram bucket
// bounds print as Envoy prints them: le="1800000", not le="1.8e+06". The
// values are the same to PromQL, but queries, recording rules and
// dashboards written against Istio's sidecars may match le as text. Text
// and OpenMetrics answers are rewritten; the request is passed on without
// Accept-Encoding, so the answer can be read (and is sent uncompressed).
// Other answers pass through unchanged.
func EnvoyBucketLabels(metrics http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r = r.Clone(r.Context())
		r.Header.Del("Accept-Encoding")
		rec := &bufferedResponse{header: http.Header{}, status: http.StatusOK}
		metrics.ServeHTTP(rec, r)
		body := rec.body.Bytes()
		ct := rec.header.Get("Content-Type")
		if (strings.HasPrefix(ct, "text/plain") || strings.HasPrefix(ct, "application/openmetrics-text")) &&
			rec.header.Get("Content-Encoding") == "" {
			body = rewriteBucketBounds(body)
			rec.header.Del("Content-Length")
		}
		for k, v := range rec.header {
			w.Header()[k] = v
		}
		w.WriteHeader(rec.status)
		_, _ = w.Write(body)
	})
}

// bufferedResponse holds a handler's answer until it is complete.
type bufferedResponse struct {
	header http.Header
	status int
	body   bytes.Buffer
	wrote  bool
}

func (b *bufferedResponse) Header() http.Header { return b.header }

func (b *bufferedResponse) WriteHeader(code int) {
	if !b.wrote {
		b.status, b.wrote = code, true
	}
}

func (b *bufferedResponse) Write(p []byte) (int, error) {
	b.wrote = true
	return b.body.Write(p)
}

// rewriteBucketBounds reprints every le="<number>" label value in fixed
// notation, the shortest that reads back as the same number.
func rewriteBucketBounds(text []byte) []byte {
	const label = `le="`
	var out []byte
	rest := text
	for {
		i := bytes.Index(rest, []byte(label))
		if i < 0 {
			break
		}
		start := i + len(label)
		end := bytes.IndexByte(rest[start:], '"')
		if end < 0 {
			break
		}
		value := string(rest[start : start+end])
		out = append(out, rest[:start]...)
		if i > 0 && rest[i-1] != '{' && rest[i-1] != ',' {
			// The tail of another label's name, such as sample="...".
			out = append(out, value...)
		} else if f, err := strconv.ParseFloat(value, 64); err == nil && strings.ContainsAny(value, "eE") {
			out = strconv.AppendFloat(out, f, 'f', -1, 64)
		} else {
			out = append(out, value...) // +Inf, or already plain
		}
		rest = rest[start+end:]
	}
	if out == nil {
		return text
	}
	return append(out, rest...)
}
