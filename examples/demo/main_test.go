package main

import (
	"context"
	"regexp"
	"strings"
	"testing"
	"time"
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
