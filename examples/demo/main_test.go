package main

import (
	"context"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"mesh/internal/testutil"
)

// TestDemo runs the README's first command in-process and checks what it
// promises to print.
func TestDemo(t *testing.T) {
	// A hang guard, not a budget: 20,000 RPCs under -race on a loaded
	// machine take what they take.
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
	defer cancel()
	var out strings.Builder
	if err := run(ctx, &out); err != nil {
		t.Fatalf("demo failed: %v\n%s", err, out.String())
	}
	got := out.String()
	t.Log("\n" + got)
	for _, want := range []*regexp.Regexp{
		regexp.MustCompile(`VirtualService 90/10, 10000 RPCs:  v1 \d+ \(\d+\.\d%\)  v2 \d+ \(\d+\.\d%\)  failed 0`),
		regexp.MustCompile(`VirtualService 0/100, 10000 RPCs:  v2 10000 \(100\.0%\)  failed 0`),
		regexp.MustCompile(`saw caller  spiffe://cluster\.local/ns/default/sa/checkout`),
		regexp.MustCompile(`trace id  checkout [0-9a-f]{32}  payments [0-9a-f]{32}  same=true`),
	} {
		if !want.MatchString(got) {
			t.Errorf("output lacks %q", want)
		}
	}
}

// TestServe runs the demo as -serve does (with fewer RPCs first) and
// follows what it prints: the mesh graph and every workload's admin pages
// and /metrics answer, and interrupting it stops it cleanly.
func TestServe(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute) // a hang guard
	defer cancel()
	serveCtx, interrupt := context.WithCancel(ctx)
	var out testutil.Buffer // the test reads while the demo writes
	done := make(chan error, 1)
	go func() { done <- runThen(serveCtx, &out, 200, serveUntilDone) }()
	for !strings.Contains(out.String(), "serving; interrupt to stop") {
		select {
		case err := <-done:
			t.Fatalf("demo -serve ended early: %v\n%s", err, out.String())
		case <-ctx.Done():
			t.Fatalf("demo -serve never got to serving:\n%s", out.String())
		case <-time.After(50 * time.Millisecond):
		}
	}
	t.Log("\n" + out.String())
	urls := regexp.MustCompile(`http://127\.0\.0\.1:\d+/[a-z/]*`).FindAllString(out.String(), -1)
	if len(urls) < 11 { // the graph, and each of five workloads' pages and metrics
		t.Fatalf("printed URLs %v; want the graph and every workload's pages and metrics", urls)
	}
	for _, u := range urls {
		resp, err := http.Get(u)
		if err != nil {
			t.Fatalf("GET %s: %v", u, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("GET %s: %s", u, resp.Status)
		}
	}
	interrupt()
	if err := <-done; err != nil {
		t.Fatalf("demo -serve after interrupt: %v", err)
	}
}
