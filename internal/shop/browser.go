package shop

import (
	"bytes"
	"context"
	"fmt"
	"html"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
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

// Chromium loads page in headless Chromium, with a profile under dir, and
// returns its stdout: the DOM after scripts ran with extra "--dump-dom",
// nothing with "--screenshot=FILE". Each fetch the page makes holds its
// virtual time, so a slow first graph.json is waited for.
func Chromium(t testing.TB, ctx context.Context, dir, page string, extra ...string) string {
	t.Helper()
	args := append([]string{"--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
		"--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage",
		"--user-data-dir=" + filepath.Join(dir, "profile"), "--window-size=1200,800", "--virtual-time-budget=5000"}, extra...)
	// Beside two race suites on 2 cores, Chromium once sat for minutes on a
	// screenshot of a page whose graph.json had long answered, and was
	// killed by the test's guard. A run takes seconds, ten or so on a busy
	// machine: a run that hangs is stopped and started again, up to
	// chromiumAttempts times, each logged; any other failure fails at once.
	for attempt := 1; ; attempt++ {
		runCtx, cancel := context.WithTimeout(ctx, chromiumAttemptGuard)
		cmd := exec.CommandContext(runCtx, ChromiumBinary, append(args, page)...)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		err := cmd.Run()
		hung := runCtx.Err() != nil && ctx.Err() == nil
		cancel()
		switch {
		case err == nil:
			return stdout.String()
		case hung && attempt < chromiumAttempts:
			t.Logf("chromium %v hung for %v (attempt %d of %d); starting it again", extra, chromiumAttemptGuard, attempt, chromiumAttempts)
		default:
			t.Fatalf("chromium %v (attempt %d of %d): %v\n%s", extra, attempt, chromiumAttempts, err, stderr.String())
		}
	}
}

// chromiumAttempts and chromiumAttemptGuard bound a hung Chromium: 3 runs
// of at most a minute each, six times the longest a run took on a busy
// machine, fit the page tests' hang guards.
const (
	chromiumAttempts     = 3
	chromiumAttemptGuard = time.Minute
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
