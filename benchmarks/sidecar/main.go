// Command sidecar measures mesh against plain grpc-go with mutual TLS,
// HAProxy mTLS sidecar pairs in TCP and in HTTP/2 mode (stand-ins for
// Envoy), mesh with no-op telemetry and grpc-go's own OpenTelemetry
// metrics plugin, every client, server and proxy a process of its own,
// and prints the Markdown tables kept in benchmarks/README.md. It needs
// haproxy on PATH (apt-get install -y haproxy).
//
//	go run ./benchmarks/sidecar
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"time"

	"mesh/benchmarks/internal/sidecar"
)

func main() {
	var cfg sidecar.Config
	variants := flag.String("variants", "", "variants to measure, comma-separated (default "+strings.Join(sidecar.Variants, ",")+", and M/before,M-lean/before with -before)")
	flag.StringVar(&cfg.Exe, "role", "", "the role program the processes run (default: built from this tree's ./benchmarks/internal/sidecar/role)")
	flag.StringVar(&cfg.Before, "before", "", "the role program of an earlier tree (go build ./benchmarks/internal/sidecar/role there), to run its M and M-lean beside this one's")
	clients := flag.Bool("clients", true, "also build and measure the lean client programs")
	leanOnly := flag.Bool("lean-only", false, "measure the lean client programs only")
	profile := flag.String("profile", "", "a directory for the mesh client's goroutine and heap profiles after its first RPC")
	beforeRoot := flag.String("before-root", "", "another checkout of mesh whose lean mesh client is measured beside this one's")
	flag.IntVar(&cfg.Reps, "reps", 3, "reps of every phase, variants taking turns; the report shows medians")
	flag.IntVar(&cfg.One, "one", 5000, "echoes per rep one at a time")
	flag.IntVar(&cfg.Eight, "eight", 100000, "echoes per rep eight at a time")
	flag.IntVar(&cfg.Slices, "slices", 5, "parts each rep's eight-at-a-time echoes are sent in, variants taking turns part by part")
	flag.IntVar(&cfg.OpenRate, "rate", 1000, "open loop: echoes per second")
	flag.IntVar(&cfg.Open, "open", 5000, "open loop: echoes per rep")
	flag.BoolVar(&cfg.AppHeader, "app-header", false, "every client sends one header of the program's own on every call, as calls with an auth token or tenant do")
	flag.Parse()
	if *variants != "" {
		cfg.Variants = strings.Split(*variants, ",")
	}
	cfg.Progress = func(s string) { fmt.Fprintln(os.Stderr, time.Now().Format(time.TimeOnly), s) }

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	loadBefore := loadAverage()
	var clientRes sidecar.Clients
	if *clients {
		var err error
		if clientRes, err = sidecar.MeasureClients(ctx, sidecar.ClientsConfig{Reps: cfg.Reps, ProfileDir: *profile, BeforeRoot: *beforeRoot}); err != nil {
			fmt.Fprintln(os.Stderr, "sidecar: clients:", err)
			os.Exit(1)
		}
	}
	if *leanOnly {
		if err := clientRes.WriteMarkdown(os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "sidecar: clients:", err)
			os.Exit(1)
		}
		return
	}
	res, err := sidecar.Run(ctx, cfg)
	if err != nil {
		fmt.Fprintln(os.Stderr, "sidecar:", err)
		os.Exit(1)
	}
	fmt.Printf("machine: %s; load average (1 min) %s at the start, %s at the end\n\n", sidecar.Machine(), loadBefore, loadAverage())
	res.WriteMarkdown(os.Stdout)
	if clientRes != nil {
		fmt.Println()
		if err := clientRes.WriteMarkdown(os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "sidecar: clients:", err)
			os.Exit(1)
		}
	}
}

// loadAverage is the one-minute load average: on a shared machine, how
// much else was running.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if f := strings.Fields(string(b)); err == nil && len(f) > 0 {
		return f[0]
	}
	return "unknown"
}
