package shop

import (
	"io"
	"net/http"
	"sync/atomic"
)

// FlakyEvery is how often Web's /flaky fails: every FlakyEvery-th call it
// serves answers 500, so the metrics and the graph have a known share of
// errors to show.
const FlakyEvery = 10

// Web is the web service's net/http handler: GET or POST /version answers
// with version; /flaky does too but fails every FlakyEvery-th call.
func Web(version string) http.Handler {
	var flaky atomic.Int64
	mux := http.NewServeMux()
	mux.HandleFunc("/version", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		_, _ = io.WriteString(w, version)
	})
	mux.HandleFunc("/flaky", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		if flaky.Add(1)%FlakyEvery == 0 {
			http.Error(w, "induced failure", http.StatusInternalServerError)
			return
		}
		_, _ = io.WriteString(w, version)
	})
	return mux
}
