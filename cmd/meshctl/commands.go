package main

import (
	"context"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"mesh/controlplane"
)

func runControlPlane(ctx context.Context, e *env, args []string) error {
	f := newFlags(e, "controlplane -config DIR -state DIR [-listen ADDR] [-api ADDR]",
		"  meshctl controlplane -config ./mesh.d -state ./cp-state -listen 127.0.0.1:15010 -api 127.0.0.1:15080")
	configDir := f.String("config", "", "directory of Istio YAML (and mesh Canary objects), watched (required)")
	stateDir := f.String("state", "", "directory for the CA, keys, API token, enrollments and canary state, 0600 (required)")
	listen := f.String("listen", "127.0.0.1:15010", "xDS listen address")
	apiAddr := f.String("api", "127.0.0.1:15080", "HTTP API listen address (keep it on loopback)")
	adminAddr := f.String("admin", "", "address for the mesh graph page (/debug/graph), e.g. 127.0.0.1:15090 (default: none)")
	trustDomain := f.String("trust-domain", "cluster.local", "SPIFFE trust domain")
	verbose := f.Bool("v", false, "log debug detail")
	rest, err := f.parse(args)
	if err != nil {
		return err
	}
	switch {
	case len(rest) > 0:
		return usagef("unexpected argument %q", rest[0])
	case *configDir == "":
		return usagef("-config: required")
	case *stateDir == "":
		return usagef("-state: required")
	}
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	logger := slog.New(slog.NewTextHandler(e.stderr, &slog.HandlerOptions{Level: level}))
	d, err := controlplane.NewDaemon(ctx, controlplane.DaemonConfig{ConfigDir: *configDir, StateDir: *stateDir, APIAddress: *apiAddr},
		controlplane.WithAddress(*listen), controlplane.WithLogger(logger), controlplane.WithTrustDomain(*trustDomain))
	if err != nil {
		return err
	}
	defer d.Close()
	fmt.Fprintf(e.stdout, "xDS on %s\nAPI on %s\n", d.Server().Addr(), d.APIURL())
	if *adminAddr != "" {
		u, err := d.ServeAdmin(ctx, *adminAddr)
		if err != nil {
			return err
		}
		fmt.Fprintf(e.stdout, "graph on %s/debug/graph\n", u)
	}
	fmt.Fprintf(e.stdout, "enroll with: meshctl bootstrap -state %s -name NAME -service SVC -port PORT -dir DIR\n", *stateDir)
	<-ctx.Done()
	return nil
}

// labelsFlag is k=v,k=v.
type labelsFlag map[string]string

func (l labelsFlag) String() string {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(l)) {
		parts = append(parts, k+"="+l[k])
	}
	return strings.Join(parts, ",")
}

func (l labelsFlag) Set(s string) error {
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok || k == "" {
			return fmt.Errorf("label %q: want key=value", kv)
		}
		l[k] = v
	}
	return nil
}

func runBootstrap(ctx context.Context, e *env, args []string) error {
	f := newFlags(e, "bootstrap -name NAME [-namespace NS] [-sa SA] [-service SVC -port PORT] [-labels k=v,...] -dir DIR",
		"  meshctl bootstrap -state ./cp-state -name payments-v3 -service payments -port 8080 -labels version=v3 -dir ./payments-v3\n"+
			"  MESH_BOOTSTRAP=./payments-v3/bootstrap.json ./payments    # or GRPC_XDS_BOOTSTRAP for any gRPC xDS client")
	api := addAPIFlags(f, e)
	out := addOutputFlag(f)
	var w controlplane.Workload
	labels := labelsFlag{}
	f.StringVar(&w.Name, "name", "", "workload name (required)")
	f.StringVar(&w.Namespace, "namespace", "default", "namespace")
	f.StringVar(&w.ServiceAccount, "sa", "", "service account (default: default, as in Kubernetes)")
	f.StringVar(&w.Service, "service", "", "service it serves (short name), if any")
	port := f.Uint("port", 0, "port of that service")
	f.Var(labels, "labels", "labels, k=v,k=v (e.g. version=v3)")
	f.StringVar(&w.Address, "address", "", "host:port the workload serves on, if fixed")
	metricsURL := f.String("metrics", "", "the workload's Prometheus /metrics URL, for the graph and canary analysis")
	dir := f.String("dir", "", "directory to write the bootstrap and credentials into (required)")
	rest, err := f.parse(args)
	if err != nil {
		return err
	}
	switch {
	case len(rest) > 0:
		return usagef("unexpected argument %q", rest[0])
	case w.Name == "":
		return usagef("-name: required")
	case *dir == "":
		return usagef("-dir: required")
	case *port > 65535:
		return usagef("-port %d: want 1..65535", *port)
	}
	if err := out.check(); err != nil {
		return err
	}
	w.Port = uint32(*port)
	if len(labels) > 0 {
		w.Labels = labels
	}
	if err := w.Validate(); err != nil {
		return usagef("%v", err)
	}
	abs, err := filepath.Abs(*dir)
	if err != nil {
		return err
	}
	c, err := api.client()
	if err != nil {
		return err
	}
	var resp controlplane.EnrollResponse
	req := controlplane.EnrollRequest{Enrollment: controlplane.Enrollment{Workload: w, MetricsURL: *metricsURL}, Dir: abs}
	if err := c.do(ctx, "POST", "/api/v1/enroll", req, &resp); err != nil {
		return err
	}
	if err := os.MkdirAll(abs, 0o700); err != nil {
		return fmt.Errorf("bootstrap dir: %w", err)
	}
	names := slices.Sorted(maps.Keys(resp.Files))
	// The bootstrap last: whoever waits for it finds the rest in place.
	names = append(slices.DeleteFunc(names, func(n string) bool { return n == controlplane.BootstrapFile }), controlplane.BootstrapFile)
	for _, name := range names {
		if filepath.Base(name) != name || name == "." || name == ".." {
			return fmt.Errorf("control plane sent file %q: not a plain file name", name)
		}
		if err := writeFile0600(filepath.Join(abs, name), resp.Files[name]); err != nil {
			return err
		}
	}
	path := filepath.Join(abs, controlplane.BootstrapFile)
	result := map[string]any{"workload": w.Namespace + "/" + w.Name, "bootstrap": path, "files": names}
	return out.print(e.stdout, result, func() {
		fmt.Fprintf(e.stdout, "enrolled %s/%s; files in %s (0600)\nMESH_BOOTSTRAP=%s\n", w.Namespace, w.Name, abs, path)
	})
}

// writeFile0600 writes through a temporary file, so a reader never sees
// half a key.
func writeFile0600(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

func runStatus(ctx context.Context, e *env, args []string) error {
	f := newFlags(e, "status [-o json|yaml]", "  meshctl status -state ./cp-state")
	api := addAPIFlags(f, e)
	out := addOutputFlag(f)
	if err := f.parseNone(args, out); err != nil {
		return err
	}
	var st controlplane.DaemonStatus
	if err := api.get(ctx, "/api/v1/status", &st); err != nil {
		return err
	}
	return out.print(e.stdout, st, func() {
		fmt.Fprintf(e.stdout, "xDS:     %s\nconfig:  %s\n", st.XDSAddress, st.ConfigDir)
		if st.ConfigError != "" {
			fmt.Fprintf(e.stdout, "REJECTED (last good config in force): %s\n", st.ConfigError)
		} else {
			fmt.Fprintln(e.stdout, "config:  in force")
		}
		if len(st.Findings) > 0 {
			fmt.Fprintf(e.stdout, "findings: %d (meshctl analyze -live)\n", len(st.Findings))
		}
		fmt.Fprintf(e.stdout, "workloads enrolled: %d\n", len(st.Workloads))
		for _, w := range st.Workloads {
			fmt.Fprintf(e.stdout, "  %s/%s\tservice=%s port=%d labels=%s\n", w.Workload.Namespace, w.Workload.Name, w.Workload.Service, w.Workload.Port, labelsFlag(w.Workload.Labels))
		}
		for _, cs := range st.Canaries {
			printCanary(e, cs)
		}
	})
}

func runCanary(ctx context.Context, e *env, args []string) error {
	const usage = "canary set HOST SUBSET=WEIGHT... | promote HOST [SUBSET] | rollback HOST [SUBSET] | status HOST | analyze HOST -stable S -canary C [-steps 10,25,50,100] [-interval 1m] ... | step HOST | release HOST"
	const example = "  meshctl canary set payments v1=90 v2=10\n  meshctl canary analyze payments -stable v1 -canary v2 -steps 10,25,50,100 -interval 1m -min-success 0.99 -max-p99 500ms\n" +
		"  meshctl canary status payments -o json\n  meshctl canary promote payments      # all traffic to the analysis's canary\n  meshctl canary rollback payments v1\n  meshctl canary step payments         # judge the analysis's current interval now\n  meshctl canary release payments      # drop the held weights: the config dir's rule again"
	f := newFlags(e, usage, example)
	api := addAPIFlags(f, e)
	out := addOutputFlag(f)
	stable := f.String("stable", "", "analyze: the stable subset")
	canarySubset := f.String("canary", "", "analyze: the canary subset")
	steps := f.String("steps", "10,25,50,100", "analyze: the canary's weight, step by step")
	interval := f.Duration("interval", time.Minute, "analyze: how long each step runs before it is judged")
	minSuccess := f.Float64("min-success", 0.99, "analyze: lowest success rate of the canary's calls per interval")
	maxP99 := f.Duration("max-p99", 0, "analyze: highest p99 latency of the canary's calls per interval (0: no limit)")
	minRequests := f.Int("min-requests", 10, "analyze: fewer canary calls in an interval: wait, do not step")
	rest, err := f.parse(args)
	if err != nil {
		return err
	}
	if err := out.check(); err != nil {
		return err
	}
	if len(rest) < 2 {
		return usagef("want an action and a host, e.g. meshctl canary status payments")
	}
	action, host, more := rest[0], rest[1], rest[2:]
	var path string
	var body any
	method := "POST"
	switch action {
	case "status":
		if len(more) > 0 {
			return usagef("unexpected argument %q", more[0])
		}
		method, path = "GET", ""
	case "set":
		if len(more) == 0 {
			return usagef("set: want SUBSET=WEIGHT arguments, e.g. v1=90 v2=10")
		}
		weights := map[string]int{}
		for _, a := range more {
			k, v, ok := strings.Cut(a, "=")
			n, err := strconv.Atoi(v)
			if !ok || k == "" || err != nil {
				return usagef("set: %q: want SUBSET=WEIGHT, e.g. v2=10", a)
			}
			weights[k] = n
		}
		path, body = "/weights", map[string]any{"weights": weights}
	case "step", "release":
		if len(more) > 0 {
			return usagef("unexpected argument %q", more[0])
		}
		path, body = "/analyze-now", struct{}{}
		if action == "release" {
			path = "/release"
		}
	case "promote", "rollback":
		if len(more) > 1 {
			return usagef("unexpected argument %q", more[1])
		}
		subset := ""
		if len(more) == 1 {
			subset = more[0]
		}
		path, body = "/"+action, map[string]string{"subset": subset}
	case "analyze":
		if len(more) > 0 {
			return usagef("unexpected argument %q", more[0])
		}
		spec := controlplane.Canary{Host: host, Stable: *stable, Canary: *canarySubset, Interval: *interval,
			MinSuccessRate: *minSuccess, MaxP99: *maxP99, MinRequests: *minRequests}
		for _, s := range strings.Split(*steps, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(s))
			if err != nil {
				return usagef("-steps %q: want numbers, e.g. 10,25,50,100", *steps)
			}
			spec.Steps = append(spec.Steps, n)
		}
		spec.Host = controlplane.QualifyHost(host, "")
		if err := spec.Validate(); err != nil {
			return usagef("%v", err)
		}
		path, body = "/analysis", spec
	default:
		return usagef("unknown action %q: want set, promote, rollback, status, analyze, step or release", action)
	}
	c, err := api.client()
	if err != nil {
		return err
	}
	var st controlplane.CanaryStatus
	if err := c.do(ctx, method, "/api/v1/canaries/"+controlplane.QualifyHost(host, "")+path, body, &st); err != nil {
		return err
	}
	return out.print(e.stdout, st, func() { printCanary(e, st) })
}

func printCanary(e *env, st controlplane.CanaryStatus) {
	var parts []string
	for _, k := range slices.Sorted(maps.Keys(st.Weights)) {
		parts = append(parts, fmt.Sprintf("%s=%d", k, st.Weights[k]))
	}
	fmt.Fprintf(e.stdout, "%s: %s\n", st.Host, strings.Join(parts, " "))
	a := st.Analysis
	if a == nil {
		return
	}
	fmt.Fprintf(e.stdout, "  analysis: %s, %s -> %s, step %d/%d (%d%%), every %v\n", a.Phase, a.Spec.Stable, a.Spec.Canary,
		a.Step+1, len(a.Spec.Steps), a.Spec.Steps[a.Step], a.Spec.Interval)
	if a.Reason != "" {
		fmt.Fprintf(e.stdout, "  reason: %s\n", a.Reason)
	}
	for _, ev := range a.History {
		fmt.Fprintf(e.stdout, "  %s  at %3d%%  %-8s %s\n", ev.Time.Format(time.RFC3339), ev.Weight, ev.Verdict, ev.Message)
	}
}

func runAnalyze(ctx context.Context, e *env, args []string) error {
	f := newFlags(e, "analyze DIR | analyze -live [-o json|yaml]",
		"  meshctl analyze ./mesh.d && cp ./mesh.d/*.yaml /etc/mesh/\n  meshctl analyze -live -state ./cp-state     # the config in force, against the workloads known now")
	out := addOutputFlag(f)
	api := addAPIFlags(f, e)
	live := f.Bool("live", false, "analyze the control plane's configuration in force instead of a directory")
	rest, err := f.parse(args)
	if err != nil {
		return err
	}
	if err := out.check(); err != nil {
		return err
	}
	var findings []controlplane.Finding
	what := ""
	switch {
	case *live && len(rest) == 0:
		c, err := api.client()
		if err != nil {
			return err
		}
		var st controlplane.DaemonStatus
		if err := c.do(ctx, "GET", "/api/v1/status", nil, &st); err != nil {
			return err
		}
		findings, what = st.Findings, "the configuration in force"
	case !*live && len(rest) == 1:
		if findings, err = controlplane.AnalyzeDir(rest[0]); err != nil {
			return err
		}
		what = rest[0]
	default:
		return usagef("want one directory, or -live")
	}
	if findings == nil {
		findings = []controlplane.Finding{}
	}
	if err := out.print(e.stdout, findings, func() {
		for _, fd := range findings {
			fmt.Fprintf(e.stdout, "%s [%s] %s: %s\n", fd.Severity, fd.Code, strings.Join(fd.Objects, ", "), fd.Message)
		}
		if len(findings) == 0 {
			fmt.Fprintf(e.stdout, "%s: no findings\n", what)
		}
	}); err != nil {
		return err
	}
	for _, fd := range findings {
		if fd.Severity == controlplane.SeverityError || fd.Severity == controlplane.SeverityWarning {
			return errFindings
		}
	}
	return nil
}
