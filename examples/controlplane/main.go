// Command controlplane runs the embedded control plane on its own: it serves
// xDS, watches an Istio YAML file, and writes a bootstrap (with SVID files)
// for each example workload. Its CA and keys live in a state directory
// (-state), so a restart keeps the trust the running workloads have.
//
//	go run ./examples/controlplane -dir /tmp/mesh -config examples/controlplane/mesh.yaml
//	MESH_BOOTSTRAP=/tmp/mesh/payments-v1/bootstrap.json go run ./examples/payments -version v1 -admin 127.0.0.1:15001
//	MESH_BOOTSTRAP=/tmp/mesh/payments-v2/bootstrap.json go run ./examples/payments -version v2 -admin 127.0.0.1:15002
//	MESH_BOOTSTRAP=/tmp/mesh/checkout/bootstrap.json go run ./examples/checkout -admin 127.0.0.1:15003
//
// Edit the YAML's weights while checkout runs, and watch its split follow;
// each workload's /metrics and admin pages are on its -admin address.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"

	"mesh/controlplane"
	"mesh/examples/shop"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:15010", "address to serve xDS on")
	dir := flag.String("dir", filepath.Join(os.TempDir(), "mesh"), "directory for the workloads' bootstraps and certificates")
	config := flag.String("config", "", "Istio YAML file or directory to serve and watch (default: <dir>/config/mesh.yaml, written with the example's 90/10 split if absent)")
	stateDir := flag.String("state", "", "directory for the CA and keys, kept across restarts (default: <dir>/controlplane-state)")
	apiAddr := flag.String("api", "127.0.0.1:0", "address of the HTTP API that meshctl uses (meshctl -state <state> finds it)")
	flag.Parse()
	if *stateDir == "" {
		*stateDir = filepath.Join(*dir, "controlplane-state")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, *addr, *dir, *config, *stateDir, *apiAddr); err != nil {
		fmt.Fprintln(os.Stderr, "controlplane:", err)
		os.Exit(1)
	}
}

// run is what `meshctl controlplane` runs (controlplane.NewDaemon), plus
// the example's own workloads declared and their bootstraps written.
func run(ctx context.Context, addr, dir, config, stateDir, apiAddr string) error {
	if config == "" {
		config = filepath.Join(dir, "config")
		if err := os.MkdirAll(config, 0o755); err != nil {
			return err
		}
		if _, err := os.Stat(filepath.Join(config, "mesh.yaml")); os.IsNotExist(err) {
			if err := os.WriteFile(filepath.Join(config, "mesh.yaml"), shop.MeshYAML(90, 10), 0o644); err != nil {
				return err
			}
		}
	}
	// Workloads and configuration are given at start, so that no workload
	// is ever answered before the configuration is in force.
	d, err := controlplane.NewDaemon(ctx, controlplane.DaemonConfig{ConfigDir: config, StateDir: stateDir, APIAddress: apiAddr},
		controlplane.WithAddress(addr), controlplane.WithLogger(slog.Default()), controlplane.WithWorkloads(shop.Workloads()...))
	if err != nil {
		return err
	}
	defer d.Close()
	cp := d.Server()
	for _, w := range shop.Workloads() {
		path, err := cp.WriteBootstrap(filepath.Join(dir, w.Name), w)
		if err != nil {
			return err
		}
		fmt.Printf("MESH_BOOTSTRAP=%s\n", path)
	}
	fmt.Printf("serving xDS on %s; API on %s (meshctl -state %s); Ctrl-C to stop\n", cp.Addr(), d.APIURL(), stateDir)
	<-ctx.Done()
	return nil
}
