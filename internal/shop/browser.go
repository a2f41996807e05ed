package shop

import (
	"bytes"
	"context"
	"fmt"
	"html"
	"image/png"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"mesh/internal/admin"
	"mesh/internal/testutil"
)

// ChromiumBinary is where Debian's chromium package installs the browser
// the page tests drive.
const ChromiumBinary = "/usr/bin/chromium"

// RequireTool skips the test, loudly, when a real tool it drives is not
// installed, except in CI (CI=true), where its absence is a failure:
// .ci/run installs it there.
func RequireTool(t testing.TB, path, debianPackage string) {
	t.Helper()
	if _, err := os.Stat(path); err == nil {
		return
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("%s is not installed; CI must install the Debian package %q (see .ci/run)", path, debianPackage)
	}
	t.Skipf("\n\n!!! SKIPPED: %s IS NOT INSTALLED, SO THIS TEST DID NOT RUN. !!!\n"+
		"!!! Install it with: apt-get update && apt-get install -y %s !!!\n", path, debianPackage)
}

// Chromium loads page in headless Chromium and returns its stdout: the
// DOM after scripts ran with extra "--dump-dom", nothing with
// "--screenshot=FILE". Each fetch the page makes holds its virtual time,
// so a slow first graph.json is waited for; the page's refreshes are not
// (see chromiumVirtualTime). dir holds the profiles.
func Chromium(t testing.TB, ctx context.Context, dir, page string, extra ...string) string {
	t.Helper()
	out, err := runChromium(ctx, t.Logf, ChromiumBinary, chromiumAttemptGuard, dir, page, extra...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// runChromium runs binary (a Chromium) on page until one run ends with its
// output whole, up to chromiumAttempts runs.
//
// A run takes seconds, ten or so on a busy machine. Chromium has hung on
// a screenshot (see chromiumVirtualTime for the case found), and it may
// finish its output and then not exit. So a run is stopped after guard.
// If its output is whole by then (the screenshot a complete PNG, the DOM
// dump through </html>), that output is taken. Otherwise the run is
// started again, up to chromiumAttempts times, each logged. Every run
// has a profile of its own and its own process group, killed whole when
// it is stopped, so nothing a stopped run leaves (a profile lock, a
// helper process) reaches the next one. Any other failure ends at once.
func runChromium(ctx context.Context, logf func(string, ...any), binary string, guard time.Duration, dir, page string, extra ...string) (string, error) {
	var screenshot string
	for _, a := range extra {
		if v, ok := strings.CutPrefix(a, "--screenshot="); ok {
			screenshot = v
		}
	}
	for attempt := 1; ; attempt++ {
		args := append([]string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
			"--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
			"--user-data-dir=" + filepath.Join(dir, fmt.Sprintf("profile-%d", attempt)), "--window-size=1200,800",
			"--virtual-time-budget=" + strconv.FormatInt(chromiumVirtualTime.Milliseconds(), 10)}, extra...)
		if screenshot != "" {
			_ = os.Remove(screenshot) // only this run's screenshot counts
		}
		runCtx, cancel := context.WithTimeout(ctx, guard)
		cmd := testutil.GroupCommand(runCtx, binary, append(args, page)...)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		// A helper that outlives the browser must not hold Wait on the
		// output pipes.
		cmd.WaitDelay = chromiumWaitDelay
		err := cmd.Run()
		hung := runCtx.Err() != nil && ctx.Err() == nil
		cancel()
		if err == nil {
			return stdout.String(), nil
		}
		whole := chromiumOutputWhole(screenshot, stdout.String())
		switch {
		case whole && hung:
			logf("chromium %v wrote its output whole, then hung until stopped after %v; taking the output", extra, guard)
			return stdout.String(), nil
		case whole:
			logf("chromium %v wrote its output whole, then failed (%v); taking the output", extra, err)
			return stdout.String(), nil
		case hung && attempt < chromiumAttempts:
			logf("chromium %v hung for %v (attempt %d of %d); starting it again", extra, guard, attempt, chromiumAttempts)
		default:
			return "", fmt.Errorf("chromium %v (attempt %d of %d): %w\n%s", extra, attempt, chromiumAttempts, err, stderr.String())
		}
	}
}

// chromiumOutputWhole reports whether a run's output is complete: the
// screenshot, when there is one, decodes as a PNG to its end; otherwise
// the DOM dump on stdout reaches </html>.
func chromiumOutputWhole(screenshot, stdout string) bool {
	if screenshot == "" {
		return strings.Contains(stdout, "</html>")
	}
	f, err := os.Open(screenshot)
	if err != nil {
		return false
	}
	defer f.Close()
	_, err = png.Decode(f)
	return err == nil
}

// chromiumVirtualTime is the page time Chromium runs scripts for before
// it dumps the DOM or takes the screenshot: the first graph.json and the
// drawing after it, and less than the graph page's refresh, so a run asks
// for graph.json once. With a budget over two refreshes, graph.json
// slowed to 2.5 s (as under the race detector on a busy machine) made
// Chromium hang on the screenshot in most runs; with one fetch it did not.
const chromiumVirtualTime = admin.GraphRefresh / 2

// chromiumAttempts and chromiumAttemptGuard bound a hung Chromium: 3 runs
// of at most a minute each, six times the longest a run took on a busy
// machine, fit the page tests' hang guards. chromiumWaitDelay bounds the
// wait for output pipes a leftover helper process holds.
const (
	chromiumAttempts     = 3
	chromiumAttemptGuard = time.Minute
	chromiumWaitDelay    = 10 * time.Second
)

// ElementTag returns the start tag in html that contains attr, or "".
func ElementTag(html, attr string) string {
	i := strings.Index(html, attr)
	if i < 0 {
		return ""
	}
	start := strings.LastIndex(html[:i], "<")
	end := strings.Index(html[i:], ">")
	if start < 0 || end < 0 {
		return ""
	}
	return html[start : i+end+1]
}

// Crawl follows every link (href and the pages' fetch calls) from base's
// index within base's host, and reports each page that does not answer
// 2xx. A graph page polls graph.json; it is crawled too.
func Crawl(ctx context.Context, base string) (visited []string, broken []string, err error) {
	link := regexp.MustCompile(`(?:href="|fetch\(")([^"#]+)"`)
	root, err := url.Parse(strings.TrimRight(base, "/") + "/")
	if err != nil {
		return nil, nil, err
	}
	seen := map[string]bool{root.String(): true}
	queue := []*url.URL{root}
	for len(queue) > 0 {
		page := queue[0]
		queue = queue[1:]
		visited = append(visited, page.Path)
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, page.String(), nil)
		if err != nil {
			return nil, nil, err
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			return nil, nil, err
		}
		body, err := io.ReadAll(io.LimitReader(resp.Body, 4<<20))
		resp.Body.Close()
		if err != nil {
			return nil, nil, err
		}
		if resp.StatusCode < 200 || resp.StatusCode > 299 {
			broken = append(broken, fmt.Sprintf("%s: %s", page.Path, resp.Status))
			continue
		}
		if !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
			continue
		}
		for _, m := range link.FindAllStringSubmatch(string(body), -1) {
			ref := html.UnescapeString(m[1])
			next, err := page.Parse(ref)
			if err != nil {
				broken = append(broken, fmt.Sprintf("%s links to %q: %v", page.Path, ref, err))
				continue
			}
			if next.Host != root.Host || seen[next.String()] {
				continue
			}
			seen[next.String()] = true
			queue = append(queue, next)
		}
	}
	return visited, broken, nil
}

// CheckLinks crawls the pages at base (name says whose, in messages),
// fails the test for each linked page that does not answer 2xx, and
// returns the paths crawled.
func CheckLinks(tb testing.TB, ctx context.Context, name, base string) []string {
	tb.Helper()
	visited, broken, err := Crawl(ctx, base)
	if err != nil {
		tb.Fatalf("crawling %s: %v", name, err)
	}
	if len(broken) > 0 {
		tb.Errorf("%s's admin pages link to pages that fail: %v", name, broken)
	}
	tb.Logf("%s: %v", name, visited)
	return visited
}
