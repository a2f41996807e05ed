package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"mesh/internal/admin/tapview"
)

// maxTapLine bounds one record: a path is the only long field.
const maxTapLine = 1 << 20

func runTap(ctx context.Context, e *env, args []string) error {
	f := newFlags(e, "tap WORKLOAD [-n COUNT] [-duration D] [-o json|yaml]",
		"  meshctl tap checkout -state ./cp-state -n 20              # the next 20 requests checkout sends or serves\n"+
			"  meshctl tap default/payments-v2 -state ./cp-state -duration 10s -o json | jq 'select(.status != \"OK\")'")
	api := addAPIFlags(f, e)
	out := addOutputFlag(f)
	count := f.Int("n", 100, "stop after this many requests")
	duration := f.Duration("duration", time.Minute, "stop after this long, however many came (a hang guard; at most 10m)")
	rest, err := f.parse(args)
	if err != nil {
		return err
	}
	if err := out.check(); err != nil {
		return err
	}
	switch {
	case len(rest) != 1:
		return usagef("want one workload, e.g. meshctl tap checkout")
	case *count < 1 || *count > 100000:
		return usagef("-n %d: want 1..100000", *count)
	case *duration <= 0 || *duration > 10*time.Minute:
		return usagef("-duration %v: want (0, 10m]", *duration)
	}
	workload, base, err := workloadAdmin(ctx, api, rest[0])
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, *duration+30*time.Second)
	defer cancel()
	q := url.Values{"n": {strconv.Itoa(*count)}, "duration": {duration.String()}}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, base+"/debug/tap?"+q.Encode(), nil)
	if err != nil {
		return fmt.Errorf("workload %s: %w", workload, err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("workload %s: admin pages unreachable: %w", workload, unwrapURLError(err))
	}
	defer resp.Body.Close()
	switch {
	case resp.StatusCode == http.StatusNotFound:
		return fmt.Errorf("workload %s: its admin pages serve no /debug/tap (serve them with mesh/admin)", workload)
	case resp.StatusCode != http.StatusOK:
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		return fmt.Errorf("workload %s: /debug/tap: %s: %s", workload, resp.Status, strings.TrimSpace(string(msg)))
	case !strings.HasPrefix(resp.Header.Get("Content-Type"), "application/x-ndjson"):
		return fmt.Errorf("workload %s: /debug/tap answers %q, not the mesh's admin pages", workload, resp.Header.Get("Content-Type"))
	}
	if out.format == "" {
		fmt.Fprintf(e.stdout, "%-12s  %-8s  %-5s  %-6s  %-32s  %-17s  %9s  %s\n", "TIME", "DIR", "PROTO", "METHOD", "PATH", "STATUS", "DURATION", "PEER")
	}
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 0, 64<<10), maxTapLine)
	var n int
	var dropped uint64
	for n < *count && sc.Scan() {
		var r tapview.Record
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			return fmt.Errorf("workload %s: /debug/tap: record %d: %w", workload, n+1, err)
		}
		n++
		dropped += r.DroppedBefore
		if err := printTapRecord(e.stdout, out, r); err != nil {
			return err
		}
	}
	// The stream ends at the count, the duration or an interrupt; anything
	// else is a failure.
	if err := sc.Err(); err != nil && n < *count && ctx.Err() == nil {
		return fmt.Errorf("workload %s: /debug/tap: %w", workload, err)
	}
	if n < *count {
		why := "stopped at -duration"
		if errors.Is(ctx.Err(), context.Canceled) {
			why = "interrupted"
		}
		fmt.Fprintf(e.stderr, "meshctl tap: %d requests in %v (%s)\n", n, *duration, why)
	}
	if dropped > 0 {
		fmt.Fprintf(e.stderr, "meshctl tap: %d requests not shown: the workload served them faster than tap read\n", dropped)
	}
	return nil
}

// printTapRecord prints one record as it arrives: a line of text, a
// line of JSON, or a YAML document.
func printTapRecord(w io.Writer, out *output, r tapview.Record) error {
	switch out.format {
	case "json":
		b, err := json.Marshal(r)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(w, "%s\n", b)
		return err
	case "yaml":
		fmt.Fprintln(w, "---")
		return out.print(w, r, nil)
	}
	_, err := fmt.Fprintf(w, "%-12s  %-8s  %-5s  %-6s  %-32s  %-17s  %9s  %s\n", r.Time.Format("15:04:05.000"), r.Direction, r.Protocol,
		r.Method, r.Path, r.Status, fmt.Sprintf("%.1fms", r.DurationMillis), orDash(r.Peer))
	return err
}
