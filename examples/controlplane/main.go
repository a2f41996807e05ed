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
	config := flag.String("config", "", "Istio YAML file to serve and watch (default: the example's 90/10 split)")
	stateDir := flag.String("state", "", "directory for the CA and keys, kept across restarts (default: <dir>/controlplane-state)")
	flag.Parse()
	if *stateDir == "" {
		*stateDir = filepath.Join(*dir, "controlplane-state")
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, *addr, *dir, *config, *stateDir); err != nil {
		fmt.Fprintln(os.Stderr, "controlplane:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, addr, dir, config, stateDir string) error {
	// Workloads and configuration are given to New, so that no workload is
	// ever answered before the configuration is in force.
	opts := []controlplane.Option{controlplane.WithAddress(addr), controlplane.WithLogger(slog.Default()),
		controlplane.WithStateDir(stateDir), controlplane.WithWorkloads(shop.Workloads()...)}
	if config != "" {
		opts = append(opts, controlplane.WithConfigFile(config))
	} else {
		opts = append(opts, controlplane.WithConfig(shop.MeshYAML(90, 10)))
	}
	cp, err := controlplane.New(ctx, opts...)
	if err != nil {
		return err
	}
	defer cp.Close()
	for _, w := range shop.Workloads() {
		path, err := cp.WriteBootstrap(filepath.Join(dir, w.Name), w)
		if err != nil {
			return err
		}
		fmt.Printf("MESH_BOOTSTRAP=%s\n", path)
	}
	fmt.Printf("serving xDS on %s; Ctrl-C to stop\n", cp.Addr())
	<-ctx.Done()
	return nil
}
