// Package testutil holds what the module's tests share: a hang guard for a
// test's context and a poll bounded by it (WaitFor), a slog handler that
// hands log records to the test, a buffer that loggers may write from
// several goroutines, servers on 127.0.0.1 that the test's cleanups stop
// (Serve, ServeHTTP, Start), and commands killed with all they started
// (GroupCommand).
//
//	ctx := testutil.Context(t)
//	logs := testutil.NewLogs(slog.LevelWarn)
//	s := newThing(slog.New(logs))
//	logs.Await(ctx, t, "config file rejected")
//
// Packages with more specific fixtures (xdstest, identitytest, sourcetest)
// build on it.
package testutil

import (
	"bytes"
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
)

// HangGuard bounds a whole test so that a hang fails it instead of the
// binary's timeout. It is never a budget for an amount of work: on a busy
// machine work takes what it takes.
const HangGuard = 5 * time.Minute

// Context returns a context that ends after HangGuard or when the test's
// cleanups run, whichever is first. Cleanups registered after the call run
// before it ends, so they may still use it.
func Context(t testing.TB) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), HangGuard)
	t.Cleanup(cancel)
	return ctx
}

// WaitFor polls cond until it holds; ctx bounds the wait, and its end
// fails the test naming what it waited for.
func WaitFor(ctx context.Context, t testing.TB, what string, cond func() bool) {
	t.Helper()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("timed out waiting for %s", what)
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// Logs is a slog.Handler that passes every record at or above its level
// to the test, through Records and Await. It never blocks the logger: a
// record the test is not keeping up with is dropped.
type Logs struct {
	level slog.Level
	ch    chan slog.Record
}

// NewLogs returns a handler of records at level and above.
func NewLogs(level slog.Level) *Logs {
	return &Logs{level: level, ch: make(chan slog.Record, 256)}
}

// Enabled reports whether l takes records at level.
func (l *Logs) Enabled(_ context.Context, level slog.Level) bool { return level >= l.level }

// Handle passes a copy of r to the test, or drops it.
func (l *Logs) Handle(_ context.Context, r slog.Record) error {
	select {
	case l.ch <- r.Clone():
	default:
	}
	return nil
}

// WithAttrs returns l: the tests read a record's own attributes only.
func (l *Logs) WithAttrs([]slog.Attr) slog.Handler { return l }

// WithGroup returns l.
func (l *Logs) WithGroup(string) slog.Handler { return l }

// Records delivers the records logged, in order.
func (l *Logs) Records() <-chan slog.Record { return l.ch }

// Await returns the first record from now on whose Format contains
// substr, formatted; it fails the test if ctx ends first.
func (l *Logs) Await(ctx context.Context, t testing.TB, substr string) string {
	t.Helper()
	for {
		select {
		case <-ctx.Done():
			t.Fatalf("timed out waiting for log %q", substr)
			return ""
		case r := <-l.ch:
			if m := Format(r); strings.Contains(m, substr) {
				return m
			}
		}
	}
}

// Next returns the next record logged; it fails the test if ctx ends
// first.
func (l *Logs) Next(ctx context.Context, t testing.TB) slog.Record {
	t.Helper()
	select {
	case r := <-l.ch:
		return r
	case <-ctx.Done():
		t.Fatal("timed out waiting for a log record")
		return slog.Record{}
	}
}

// Attr returns the value of r's attribute key as a string, or "" if r has
// none.
func Attr(r slog.Record, key string) string {
	var v string
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == key {
			v = a.Value.String()
			return false
		}
		return true
	})
	return v
}

// Format renders r as its message followed by " key=value" for each
// attribute.
func Format(r slog.Record) string {
	var b strings.Builder
	b.WriteString(r.Message)
	r.Attrs(func(a slog.Attr) bool {
		b.WriteString(" " + a.Key + "=" + a.Value.String())
		return true
	})
	return b.String()
}

// Buffer is a bytes.Buffer safe for concurrent writers, such as a text
// or JSON slog handler's.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write appends p.
func (b *Buffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

// String returns what has been written so far.
func (b *Buffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// Server is what Serve needs of a server: a grpc.Server has it.
type Server interface {
	Serve(net.Listener) error
	Stop()
}

// Serve serves srv on lis until the test's cleanups, which stop it and
// wait for Serve to return, so no goroutine of it outlives the test. An
// error from Serve other than its being stopped fails the test.
func Serve(t testing.TB, srv Server, lis net.Listener) {
	t.Helper()
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	t.Cleanup(func() {
		srv.Stop()
		if err := <-served; err != nil && !errors.Is(err, http.ErrServerClosed) && !errors.Is(err, grpc.ErrServerStopped) {
			t.Errorf("serve: %v", err)
		}
	})
}

// Start serves srv on a new listener on 127.0.0.1 until the test's
// cleanups, as Serve does, and returns its address.
func Start(t testing.TB, srv Server) string {
	t.Helper()
	lis := Listen(t)
	Serve(t, srv, lis)
	return lis.Addr().String()
}

// HTTPServer is what ServeHTTP needs of a server: an http.Server has it,
// and so do servers built on one.
type HTTPServer interface {
	Serve(net.Listener) error
	Close() error
}

// ServeHTTP serves srv on lis until the test's cleanups, which close it
// and wait for Serve to return.
func ServeHTTP(t testing.TB, srv HTTPServer, lis net.Listener) {
	t.Helper()
	Serve(t, closer{srv}, lis)
}

// closer stops an HTTPServer the way Serve stops a gRPC server: at once.
type closer struct{ HTTPServer }

func (c closer) Stop() { _ = c.Close() }

// Listen returns a TCP listener on a free port of 127.0.0.1, closed by the
// test's cleanups (closing it again after a server has is harmless).
func Listen(t testing.TB) net.Listener {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	t.Cleanup(func() { _ = lis.Close() })
	return lis
}

// RootPool returns a pool of the PEM certificates in pemData, failing the
// test if there are none.
func RootPool(t testing.TB, pemData []byte) *x509.CertPool {
	t.Helper()
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pemData) {
		t.Fatal("root PEM did not parse")
	}
	return pool
}

// CSR returns a PEM certificate request signed by key, with uris as its URI
// SANs (none, one or several, as a test of a CA needs).
func CSR(t testing.TB, key crypto.Signer, uris ...string) string {
	t.Helper()
	tmpl := &x509.CertificateRequest{}
	for _, u := range uris {
		parsed, err := url.Parse(u)
		if err != nil {
			t.Fatal(err)
		}
		tmpl.URIs = append(tmpl.URIs, parsed)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, key)
	if err != nil {
		t.Fatal(err)
	}
	return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
}

// GroupCommand returns exec.CommandContext(ctx, name, args...) run in a
// process group of its own, which is killed whole when ctx ends before the
// command does: what it started in the background goes with it.
func GroupCommand(ctx context.Context, name string, args ...string) *exec.Cmd {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	// Cancel runs only while the process is not yet waited for, so its
	// group cannot have been reused by another.
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	return cmd
}
