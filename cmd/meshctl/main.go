// Command meshctl runs, enrolls into and steers a mesh without Go code.
//
//	meshctl controlplane -config ./mesh.d -state ./state      # the control plane, as a process
//	meshctl bootstrap -state ./state -name payments-v3 -service payments -port 8080 \
//	    -labels version=v3 -dir ./payments-v3                  # enroll a workload
//	meshctl canary set payments v1=90 v2=10                    # steer a split
//	meshctl canary analyze payments -stable v1 -canary v2 -steps 10,25,50,100 -interval 1m
//	meshctl analyze ./mesh.d                                   # check YAML before applying it
//	meshctl analyze -live                                      # the config in force, against the workloads known
//	meshctl status | proxy-status | top                         # config state; xDS sync per workload; traffic per edge
//	meshctl proxy-config routes checkout                        # what a workload has in force, from its admin pages
//	meshctl tap checkout -n 20                                 # its next 20 requests, live
//	meshctl dashboard                                          # the graph page (controlplane -admin ADDR)
//
// Commands that talk to the control plane find its API through -state
// DIR (or MESHCTL_STATE), or -api URL and -token FILE.
//
// Exit codes: 0 success, 1 failure or findings, 2 usage.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
)

// Exit codes a script can use.
const (
	exitOK      = 0
	exitFailure = 1
	exitUsage   = 2
)

// errUsage marks an error as the caller's: exit 2.
type usageError struct{ msg string }

func (e usageError) Error() string { return e.msg }

func usagef(format string, args ...any) error { return usageError{fmt.Sprintf(format, args...)} }

// errFindings says the command ran and found problems: exit 1, nothing
// more to print.
var errFindings = errors.New("findings")

// exitFindings says when a command exits 1 having run well.
func exitFindings(command string) string {
	switch command {
	case "analyze":
		return " or a finding of severity Error or Warning (Info alone exits 0)"
	case "proxy-status":
		return " or a workload NACKed its config"
	}
	return ""
}

type command struct {
	name, summary string
	run           func(ctx context.Context, env *env, args []string) error
}

// env is what a command writes to, so tests could run it in process.
type env struct {
	stdout, stderr io.Writer
	getenv         func(string) string
}

func commands() []command {
	return []command{
		{"controlplane", "run the control plane: watched config dir, state dir, xDS and the HTTP API", runControlPlane},
		{"bootstrap", "enroll a workload and write its bootstrap and credentials into a directory", runBootstrap},
		{"canary", "set, promote, roll back or analyze a host's canary split", runCanary},
		{"status", "the control plane's config state, enrolled workloads and canaries", runStatus},
		{"proxy-status", "every connected workload's xDS sync state: versions sent and ACKed, NACK errors, last seen", runProxyStatus},
		{"proxy-config", "what a workload has in force, read from its admin pages: routes, clusters, endpoints, certificates", runProxyConfig},
		{"top", "live per edge: rps, success %, p50, p99, mTLS", runTop},
		{"tap", "a bounded live stream of a workload's requests: method, path, status, duration, peer", runTap},
		{"dashboard", "print, and open where a browser exists, the control plane's graph page", runDashboard},
		{"analyze", "check a directory of Istio YAML (and Canary objects) offline, or the config in force (-live)", runAnalyze},
	}
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, &env{stdout: os.Stdout, stderr: os.Stderr, getenv: os.Getenv}, os.Args[1:])
	stop()
	os.Exit(code)
}

func run(ctx context.Context, e *env, args []string) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		printUsage(e.stderr)
		if len(args) == 0 {
			return exitUsage
		}
		return exitOK
	}
	for _, c := range commands() {
		if c.name != args[0] {
			continue
		}
		err := c.run(ctx, e, args[1:])
		var ue usageError
		switch {
		case err == nil:
			return exitOK
		case errors.Is(err, flag.ErrHelp):
			return exitOK
		case errors.As(err, &ue):
			fmt.Fprintf(e.stderr, "meshctl %s: %v (see meshctl %s -h)\n", c.name, err, c.name)
			return exitUsage
		case errors.Is(err, errFindings):
			return exitFailure
		default:
			fmt.Fprintf(e.stderr, "meshctl %s: %v\n", c.name, err)
			return exitFailure
		}
	}
	fmt.Fprintf(e.stderr, "meshctl: unknown command %q (see meshctl -h)\n", args[0])
	return exitUsage
}

func printUsage(w io.Writer) {
	fmt.Fprintln(w, "meshctl runs, enrolls into and steers a mesh.\n\nUsage: meshctl <command> [flags] [args]\n\nCommands:")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-13s %s\n", c.name, c.summary)
	}
	fmt.Fprintln(w, "\nExit codes: 0 success, 1 failure or findings, 2 usage. Every command takes -h.")
}

// flags is a command's flag set, with its help.
type flags struct {
	*flag.FlagSet
	help func()
}

// newFlags makes a command's flag set; -h prints usage and example.
func newFlags(e *env, usage, example string) *flags {
	name, _, _ := strings.Cut(usage, " ")
	fs := flag.NewFlagSet("meshctl "+name, flag.ContinueOnError)
	fs.SetOutput(io.Discard) // errors are printed once, by run
	fs.Usage = func() {}
	help := func() {
		fmt.Fprintf(e.stderr, "Usage: meshctl %s\n\nExample:\n%s\n\nExit codes: 0 success, 1 failure%s, 2 usage\n\nFlags:\n", usage, example, exitFindings(name))
		fs.SetOutput(e.stderr)
		fs.PrintDefaults()
		fs.SetOutput(io.Discard)
	}
	return &flags{fs, help}
}

// parse parses args, flags before, between or after the positional
// arguments, which it returns; flag errors are usage errors.
func (f *flags) parse(args []string) ([]string, error) {
	var positional []string
	for {
		if err := f.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				f.help()
				return nil, err
			}
			return nil, usageError{err.Error()}
		}
		args = f.Args()
		if len(args) == 0 {
			return positional, nil
		}
		if args[0] == "--" {
			return append(positional, args[1:]...), nil
		}
		positional = append(positional, args[0])
		args = args[1:]
	}
}

// parseNone parses the args of a command that takes flags only, and
// checks -o if it has one.
func (f *flags) parseNone(args []string, out *output) error {
	rest, err := f.parse(args)
	if err != nil {
		return err
	}
	if len(rest) > 0 {
		return usagef("unexpected argument %q", rest[0])
	}
	if out != nil {
		return out.check()
	}
	return nil
}
