package shop

import (
	"bytes"
	"fmt"
	"image"
	"image/png"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"mesh/internal/testutil"
)

// fakeChromiumGuard stops a fake run that hangs on purpose. The fakes that
// finish are a few shell lines; one cut short by it is run again.
const fakeChromiumGuard = 5 * time.Second

// fakeChromium writes a shell script standing in for Chromium: it reads
// the profile and the screenshot path from its arguments as Chromium does,
// then runs body, which may use $profile, $shot (empty for --dump-dom),
// $state (a directory of its own), and the functions output (writes a
// whole PNG to $shot, or prints a DOM) and hang.
func fakeChromium(t *testing.T, body string) (binary, state string) {
	t.Helper()
	dir := t.TempDir()
	state = filepath.Join(dir, "state")
	if err := os.Mkdir(state, 0o755); err != nil {
		t.Fatal(err)
	}
	var img bytes.Buffer
	if err := png.Encode(&img, image.NewGray(image.Rect(0, 0, 4, 4))); err != nil {
		t.Fatal(err)
	}
	fixture := filepath.Join(dir, "page.png")
	if err := os.WriteFile(fixture, img.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	script := fmt.Sprintf(`#!/bin/sh
state=%q
shot=
for a in "$@"; do
	case "$a" in
	--user-data-dir=*) profile="${a#--user-data-dir=}" ;;
	--screenshot=*) shot="${a#--screenshot=}" ;;
	esac
done
output() {
	if [ -n "$shot" ]; then cp %q "$shot"; else echo '<html><body>page</body></html>'; fi
}
hang() {
	sleep 300 &
	echo $! >> "$state/pids"
	echo $$ >> "$state/pids"
	exec sleep 300
}
echo run >> "$state/runs"
%s
`, state, fixture, body)
	binary = filepath.Join(dir, "chromium")
	if err := os.WriteFile(binary, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return binary, state
}

// runFake runs runChromium on binary and returns its output, what it
// logged and its error.
func runFake(t *testing.T, binary string, extra ...string) (out, logged string, err error) {
	t.Helper()
	ctx := testutil.Context(t)
	var mu sync.Mutex
	var log strings.Builder
	logf := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintf(&log, format+"\n", args...)
	}
	out, err = runChromium(ctx, logf, binary, fakeChromiumGuard, t.TempDir(), "http://127.0.0.1:1/page", extra...)
	t.Logf("runChromium logged:\n%s", log.String())
	return out, log.String(), err
}

// runs counts the fake's runs.
func runs(t *testing.T, state string) int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(state, "runs"))
	if err != nil {
		t.Fatal(err)
	}
	return strings.Count(string(b), "run")
}

// requireStopped waits until every process the fake recorded is gone (or
// a zombie left to its new parent): a stopped run's whole process group
// was killed.
func requireStopped(t *testing.T, state string) {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(state, "pids"))
	if err != nil {
		t.Fatal(err)
	}
	ctx := testutil.Context(t)
	for _, field := range strings.Fields(string(b)) {
		pid, err := strconv.Atoi(field)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			if t.Failed() && running(pid) {
				_ = syscall.Kill(pid, syscall.SIGKILL) // a leftover of the failure
			}
		})
		testutil.WaitFor(ctx, t, fmt.Sprintf("process %d of a stopped run to end", pid), func() bool { return !running(pid) })
	}
}

// running reports whether pid is a process that has not exited.
func running(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// The state follows the command name's closing parenthesis.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && i+2 < len(s) && s[i+2] != 'Z' && s[i+2] != 'X'
}

func TestChromiumTakesWholeOutputOfARunThatHangsAfterward(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		extra func(dir string) []string
		check func(t *testing.T, out string, extra []string)
	}{
		{"screenshot", func(dir string) []string { return []string{"--screenshot=" + filepath.Join(dir, "shot.png")} },
			func(t *testing.T, _ string, extra []string) {
				if !chromiumOutputWhole(strings.TrimPrefix(extra[0], "--screenshot="), "") {
					t.Error("the screenshot is not a whole PNG")
				}
			}},
		{"dump-dom", func(string) []string { return []string{"--dump-dom"} },
			func(t *testing.T, out string, _ []string) {
				if !strings.Contains(out, "</html>") {
					t.Errorf("output %q is not the DOM", out)
				}
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			binary, state := fakeChromium(t, "output\nhang")
			extra := tc.extra(t.TempDir())
			out, logged, err := runFake(t, binary, extra...)
			if err != nil {
				t.Fatal(err)
			}
			tc.check(t, out, extra)
			if n := runs(t, state); n != 1 {
				t.Errorf("chromium ran %d times; its first run's output was whole", n)
			}
			if !strings.Contains(logged, "wrote its output whole") {
				t.Errorf("the run that hung after its output was not logged as such")
			}
			requireStopped(t, state)
		})
	}
}

// A stopped run can leave its profile unusable (a lock, a helper still
// holding it): a run on that profile hangs too. Every run gets a profile
// of its own.
func TestChromiumStartsAHungRunAgainWithAFreshProfile(t *testing.T) {
	t.Parallel()
	binary, state := fakeChromium(t, `
if [ -e "$profile/used" ]; then hang; fi
mkdir -p "$profile" && touch "$profile/used"
if [ ! -e "$state/hung-once" ]; then touch "$state/hung-once"; hang; fi
output`)
	shot := filepath.Join(t.TempDir(), "shot.png")
	if _, logged, err := runFake(t, binary, "--screenshot="+shot); err != nil {
		t.Fatal(err)
	} else if !strings.Contains(logged, "hung for") {
		t.Error("the hung first run was not logged")
	}
	if n := runs(t, state); n != 2 {
		t.Errorf("chromium ran %d times, want 2", n)
	}
	if !chromiumOutputWhole(shot, "") {
		t.Error("no whole screenshot")
	}
	requireStopped(t, state)
}

// A helper that outlives the browser and keeps its output pipes open does
// not hold the run.
func TestChromiumDoesNotWaitForAHelperHoldingItsOutput(t *testing.T) {
	t.Parallel()
	binary, state := fakeChromium(t, `
output
sleep 300 &
echo $! >> "$state/pids"
exit 0`)
	t.Cleanup(func() {
		if b, err := os.ReadFile(filepath.Join(state, "pids")); err == nil {
			for _, f := range strings.Fields(string(b)) {
				if pid, err := strconv.Atoi(f); err == nil {
					_ = syscall.Kill(pid, syscall.SIGKILL)
				}
			}
		}
	})
	out, _, err := runFake(t, binary, "--dump-dom")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "</html>") {
		t.Errorf("output %q is not the DOM", out)
	}
	if n := runs(t, state); n != 1 {
		t.Errorf("chromium ran %d times, want 1", n)
	}
}

func TestChromiumGivesUpAfterItsAttempts(t *testing.T) {
	t.Parallel()
	binary, state := fakeChromium(t, "hang")
	_, _, err := runFake(t, binary, "--dump-dom")
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("attempt %d of %d", chromiumAttempts, chromiumAttempts)) {
		t.Fatalf("err = %v, want the last attempt's failure", err)
	}
	if n := runs(t, state); n != chromiumAttempts {
		t.Errorf("chromium ran %d times, want %d", n, chromiumAttempts)
	}
	requireStopped(t, state)
}

func TestChromiumFailsAtOnceOnOtherErrors(t *testing.T) {
	t.Parallel()
	binary, state := fakeChromium(t, "echo 'no such page' >&2\nexit 3")
	_, _, err := runFake(t, binary, "--dump-dom")
	if err == nil || !strings.Contains(err.Error(), "no such page") {
		t.Fatalf("err = %v, want chromium's own message", err)
	}
	if n := runs(t, state); n != 1 {
		t.Errorf("chromium ran %d times, want 1", n)
	}
}
