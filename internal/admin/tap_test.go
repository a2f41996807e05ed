package admin_test

import (
	"bufio"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"mesh/internal/admin"
	"mesh/internal/admin/tapview"
	"mesh/telemetry"
)

// TestTapPage: /debug/tap streams one record per request until its count,
// reports requests its reader missed, refuses bad bounds, and shows no
// credential; without a tap it is a 404 the index does not link.
func TestTapPage(t *testing.T) {
	tap := telemetry.NewTap()
	srv := httptest.NewServer(admin.NewHandler(admin.Config{Tap: tapview.Handler(tap, nil)}))
	t.Cleanup(srv.Close)
	app := telemetry.Middleware(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}), telemetry.WithTap(tap))

	resp, err := http.Get(srv.URL + "/debug/tap?n=3&duration=2m")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "application/x-ndjson" {
		t.Fatalf("/debug/tap: %s %q", resp.Status, resp.Header.Get("Content-Type"))
	}
	// The headers came: the stream is subscribed. Five requests before
	// the page reads any may overflow its buffer (3): counted, not lost
	// silently.
	for range 5 {
		req := httptest.NewRequest(http.MethodGet, "http://user:pw@web/x?token=secret", nil)
		req.Header.Set("Authorization", "Bearer secret")
		app.ServeHTTP(httptest.NewRecorder(), req)
	}
	sc := bufio.NewScanner(resp.Body)
	var recs []tapview.Record
	var body strings.Builder
	for sc.Scan() {
		body.WriteString(sc.Text())
		var r tapview.Record
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatal(err)
		}
		recs = append(recs, r)
	}
	if len(recs) != 3 {
		t.Fatalf("n=3 streamed %d records", len(recs))
	}
	var dropped uint64
	for _, r := range recs {
		dropped += r.DroppedBefore
		if r.Path != "/x" || r.Protocol != "http" || r.Status != "200" || r.Direction != "inbound" {
			t.Errorf("record %+v", r)
		}
	}
	if dropped > 2 {
		t.Errorf("dropped %d of 5 into a buffer of 3", dropped)
	}
	if strings.Contains(body.String(), "secret") || strings.Contains(body.String(), "pw") {
		t.Errorf("the stream shows a credential: %s", body.String())
	}

	// A gRPC entry: its status by name, a query and userinfo never shown.
	r := tapview.RecordOf(telemetry.Entry{StartTime: time.Unix(1, 0), Method: "POST", Path: "/p.S/M?k=secret",
		Authority: "u:secret@svc:8080", GRPCStatus: "14", ResponseCode: 200, Duration: 1500 * time.Microsecond})
	if r.Protocol != "grpc" || r.Status != "Unavailable" || r.Path != "/p.S/M" || r.Authority != "svc:8080" || r.DurationMillis != 1.5 {
		t.Errorf("TapRecordOf = %+v", r)
	}

	for _, q := range []string{"n=0", "n=x", "duration=-1s", "duration=1h"} {
		resp, err := http.Get(srv.URL + "/debug/tap?" + q)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("/debug/tap?%s: %s, want 400", q, resp.Status)
		}
	}
	// A quiet tap ends at its duration.
	resp2, err := http.Get(srv.URL + "/debug/tap?duration=100ms")
	if err != nil {
		t.Fatal(err)
	}
	resp2.Body.Close()
	if resp2.StatusCode != http.StatusOK {
		t.Errorf("quiet tap: %s", resp2.Status)
	}

	plain := httptest.NewServer(admin.NewHandler(admin.Config{}))
	t.Cleanup(plain.Close)
	resp3, err := http.Get(plain.URL + "/debug/tap")
	if err != nil {
		t.Fatal(err)
	}
	resp3.Body.Close()
	if resp3.StatusCode != http.StatusNotFound {
		t.Errorf("/debug/tap without a tap: %s, want 404", resp3.Status)
	}
}
