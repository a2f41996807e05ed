package sidecar

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"mesh"
	"mesh/benchmarks/internal/echo"
	"mesh/controlplane"
)

// The client programs MeasureClients builds, in the order it reports them.
const (
	// GRPCClient is plain grpc-go with mTLS: the baseline.
	GRPCClient = "grpc-go + mTLS"
	// MeshClient is mesh.New from the environment and one Dial.
	MeshClient = "mesh"
	// XDSClient is stock grpc-go xDS (google.golang.org/grpc/xds), built
	// from a module of its own.
	XDSClient = "grpc-go xDS"
	// MeshBefore is the mesh client built from ClientsConfig.BeforeRoot.
	MeshBefore = "mesh (before)"
)

// ClientsConfig sizes MeasureClients. Zero fields take the defaults.
type ClientsConfig struct {
	// Root is mesh's module directory (found with go env GOMOD).
	Root string
	// Reps is how many times each client process runs, taking turns (3).
	Reps int
	// Stderr receives the builds' and processes' standard error (os.Stderr).
	Stderr io.Writer
	// ProfileDir, if set, receives the mesh client's goroutine profile
	// (goroutines.txt) and heap profile (heap.pprof) after its first RPC,
	// from one more run of a build with -tags leanprofile (so that
	// runtime/pprof stays out of the binary measured).
	ProfileDir string
	// BeforeRoot, if set, is another checkout of mesh (an earlier commit)
	// whose mesh client is measured too, as MeshBefore.
	BeforeRoot string
}

func (cfg *ClientsConfig) defaults(ctx context.Context) error {
	if cfg.Reps <= 0 {
		cfg.Reps = 3
	}
	if cfg.Stderr == nil {
		cfg.Stderr = os.Stderr
	}
	if cfg.Root == "" {
		root, err := moduleRoot(ctx)
		if err != nil {
			return err
		}
		cfg.Root = root
	}
	return nil
}

// ClientReport describes one client program.
type ClientReport struct {
	Binary int64 // bytes, stripped (-ldflags=-s -w, -trimpath)
	// BinaryNoTrace is the same built with -tags grpcnotrace, grpc-go's
	// documented tag that leaves golang.org/x/net/trace out. That package
	// registers HTML pages rendered by text/template, whose reflective
	// method calls make the linker keep every exported method of every
	// type in the binary: for a program holding Envoy's protos, megabytes
	// of generated validators it never calls.
	BinaryNoTrace int64
	Modules       []string // dependency modules linked, from go version -m
	// Medians over the reps:
	FirstRPC   time.Duration // from the process's start to its first answer
	Goroutines int           // right after the first answer
	HeapBytes  uint64        // live heap after a GC, right after the first answer
}

// Clients holds a ClientReport per client program.
type Clients map[string]*ClientReport

// clientSources are the client programs: the module directory to build
// in and the package.
func clientSources(cfg ClientsConfig) map[string][2]string {
	srcs := map[string][2]string{
		GRPCClient: {cfg.Root, "./benchmarks/internal/sidecar/grpcclient"},
		MeshClient: {cfg.Root, "./benchmarks/internal/sidecar/meshclient"},
		XDSClient:  {filepath.Join(cfg.Root, "benchmarks/internal/grpcxds"), "."},
	}
	if cfg.BeforeRoot != "" {
		srcs[MeshBefore] = [2]string{cfg.BeforeRoot, "./benchmarks/internal/sidecar/meshclient"}
	}
	return srcs
}

// buildClient builds a client program stripped, with extra go build
// arguments (tags), into bin.
func buildClient(ctx context.Context, cfg ClientsConfig, src [2]string, bin string, extra ...string) error {
	args := append([]string{"build", "-trimpath", "-ldflags=-s -w", "-o", bin}, extra...)
	build := exec.CommandContext(ctx, "go", append(args, src[1])...)
	build.Dir, build.Stderr = src[0], cfg.Stderr
	if err := build.Run(); err != nil {
		return fmt.Errorf("building %s: %w", src[1], err)
	}
	return nil
}

// leanServers are what the client programs talk to: the control plane, a
// mesh server with STRICT mTLS and RBAC for the mesh and xDS clients, a
// grpc-go mTLS server for the baseline.
type leanServers struct {
	dirs      map[string]string
	plainAddr string
	closers   []func()
}

func startLeanServers(ctx context.Context, tmp string) (_ *leanServers, err error) {
	ls := &leanServers{}
	defer func() {
		if err != nil {
			ls.close()
		}
	}()
	cp, dirs, err := startControlPlane(ctx, tmp)
	if err != nil {
		return nil, err
	}
	ls.closers = append(ls.closers, func() { cp.Close() })
	ls.dirs = dirs
	plainAddr, stopPlain, err := servePlain(dirs["echo"])
	if err != nil {
		return nil, err
	}
	ls.closers = append(ls.closers, stopPlain)
	ls.plainAddr = plainAddr
	stopMesh, err := serveMesh(ctx, dirs["echo"])
	if err != nil {
		return nil, err
	}
	ls.closers = append(ls.closers, stopMesh)
	return ls, nil
}

func (ls *leanServers) close() {
	for i := len(ls.closers) - 1; i >= 0; i-- {
		ls.closers[i]()
	}
}

// command runs the client program name from bin against the servers.
func (ls *leanServers) command(ctx context.Context, name, bin string) *exec.Cmd {
	var cmd *exec.Cmd
	bootstrap := filepath.Join(ls.dirs["client-echo"], controlplane.BootstrapFile)
	switch name {
	case GRPCClient:
		cmd = exec.CommandContext(ctx, bin, ls.dirs["client-echo"], ls.plainAddr)
	case MeshClient, MeshBefore:
		cmd = exec.CommandContext(ctx, bin, "echo.default.svc.cluster.local:8080")
		cmd.Env = append(os.Environ(), "MESH_BOOTSTRAP="+bootstrap)
	case XDSClient:
		cmd = exec.CommandContext(ctx, bin, "echo.default.svc.cluster.local:8080")
		cmd.Env = append(os.Environ(), "GRPC_XDS_BOOTSTRAP="+bootstrap)
	}
	return cmd
}

// MeasureClients builds the three client programs, runs each against
// servers in this process until its first answer, and reports what each
// costs.
func MeasureClients(ctx context.Context, cfg ClientsConfig) (Clients, error) {
	if err := cfg.defaults(ctx); err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp("", "mesh-clients-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)

	res := Clients{}
	bins := map[string]string{}
	for name, src := range clientSources(cfg) {
		bin := filepath.Join(tmp, strings.NewReplacer(" ", "", "+", "", "-", "").Replace(name))
		if err := buildClient(ctx, cfg, src, bin); err != nil {
			return nil, fmt.Errorf("the %s client: %w", name, err)
		}
		if err := buildClient(ctx, cfg, src, bin+"-notrace", "-tags", "grpcnotrace"); err != nil {
			return nil, fmt.Errorf("the %s client: %w", name, err)
		}
		r := &ClientReport{}
		for _, b := range []struct {
			path string
			size *int64
		}{{bin, &r.Binary}, {bin + "-notrace", &r.BinaryNoTrace}} {
			st, err := os.Stat(b.path)
			if err != nil {
				return nil, err
			}
			*b.size = st.Size()
		}
		if r.Modules, err = modules(ctx, bin); err != nil {
			return nil, err
		}
		res[name], bins[name] = r, bin
	}

	ls, err := startLeanServers(ctx, tmp)
	if err != nil {
		return nil, err
	}
	defer ls.close()
	runs := map[string][]firstRun{}
	for range cfg.Reps {
		for _, name := range []string{GRPCClient, MeshClient, MeshBefore, XDSClient} {
			if bins[name] == "" {
				continue
			}
			run, err := runFirst(ls.command(ctx, name, bins[name]), cfg.Stderr)
			if err != nil {
				return nil, fmt.Errorf("%s client: %w", name, err)
			}
			runs[name] = append(runs[name], run)
		}
	}
	if cfg.ProfileDir != "" {
		if _, err := profileMeshClient(ctx, cfg, ls, tmp, cfg.ProfileDir); err != nil {
			return nil, err
		}
	}
	for name, rs := range runs {
		r := res[name]
		r.FirstRPC = medianOf(rs, func(f firstRun) time.Duration { return f.took })
		r.Goroutines = medianOf(rs, func(f firstRun) int { return f.stats.Goroutines })
		r.HeapBytes = medianOf(rs, func(f firstRun) uint64 { return f.stats.HeapBytes })
	}
	return res, nil
}

// MeshClientProfile is what one run of the mesh client program says about
// itself after its first RPC.
type MeshClientProfile struct {
	// Binary is the unstripped program built with -tags leanprofile, for
	// go tool nm.
	Binary string
	// Goroutines is the goroutine profile with debug=2: every goroutine's
	// stack and the function that created it.
	Goroutines string
	HeapBytes  uint64 // live heap after a GC
}

// ProfileMeshClient builds the mesh client program with its profiles
// (-tags leanprofile), runs it once against the servers MeasureClients
// uses, and returns what it wrote to dir.
func ProfileMeshClient(ctx context.Context, cfg ClientsConfig, dir string) (*MeshClientProfile, error) {
	if err := cfg.defaults(ctx); err != nil {
		return nil, err
	}
	ls, err := startLeanServers(ctx, dir)
	if err != nil {
		return nil, err
	}
	defer ls.close()
	return profileMeshClient(ctx, cfg, ls, dir, dir)
}

// profileMeshClient builds the mesh client with its profiles into tmp and
// runs it once, writing them to dir.
func profileMeshClient(ctx context.Context, cfg ClientsConfig, ls *leanServers, tmp, dir string) (*MeshClientProfile, error) {
	dir, err := filepath.Abs(dir)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	bin := filepath.Join(tmp, "meshclient-profile")
	build := exec.CommandContext(ctx, "go", "build", "-tags", "leanprofile", "-o", bin, "./benchmarks/internal/sidecar/meshclient")
	build.Dir, build.Stderr = cfg.Root, cfg.Stderr
	if err := build.Run(); err != nil {
		return nil, fmt.Errorf("building the profiling mesh client: %w", err)
	}
	cmd := ls.command(ctx, MeshClient, bin)
	// Every allocation is sampled, from the first package's init on: the
	// heap in question is a few MiB, and the default rate (one sample per
	// 512 KiB) would leave most of it unnamed.
	cmd.Env = append(cmd.Env, "MESH_CLIENT_PROFILE="+dir, "GODEBUG=memprofilerate=1")
	run, err := runFirst(cmd, cfg.Stderr)
	if err != nil {
		return nil, fmt.Errorf("profiling mesh client: %w", err)
	}
	g, err := os.ReadFile(filepath.Join(dir, "goroutines.txt"))
	if err != nil {
		return nil, err
	}
	return &MeshClientProfile{Binary: bin, Goroutines: string(g), HeapBytes: run.stats.HeapBytes}, nil
}

func quietLogger() *slog.Logger {
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
}

type firstRun struct {
	took  time.Duration
	stats echo.ClientStats
}

// runFirst starts cmd and times it until it prints "ok".
func runFirst(cmd *exec.Cmd, stderr io.Writer) (firstRun, error) {
	cmd.Stderr = stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		return firstRun{}, err
	}
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return firstRun{}, err
	}
	defer cmd.Wait()
	s := bufio.NewScanner(out)
	if !s.Scan() || s.Text() != "ok" {
		return firstRun{}, fmt.Errorf("no first answer: %q %v", s.Text(), s.Err())
	}
	r := firstRun{took: time.Since(start)}
	if !s.Scan() {
		return firstRun{}, fmt.Errorf("no stats: %v", s.Err())
	}
	if err := json.Unmarshal(s.Bytes(), &r.stats); err != nil {
		return firstRun{}, fmt.Errorf("stats %q: %w", s.Text(), err)
	}
	return r, nil
}

func medianOf[T any, V int | uint64 | time.Duration](xs []T, get func(T) V) V {
	vs := make([]V, len(xs))
	for i, x := range xs {
		vs[i] = get(x)
	}
	slices.Sort(vs)
	return vs[len(vs)/2]
}

// modules lists the dependency modules go version -m finds in bin.
func modules(ctx context.Context, bin string) ([]string, error) {
	out, err := exec.CommandContext(ctx, "go", "version", "-m", bin).Output()
	if err != nil {
		return nil, fmt.Errorf("go version -m %s: %w", bin, err)
	}
	var mods []string
	for line := range bytes.Lines(out) {
		if f := strings.Fields(string(line)); len(f) >= 2 && f[0] == "dep" {
			mods = append(mods, f[1])
		}
	}
	return mods, nil
}

// servePlain serves the echo over grpc-go with mTLS from dir's SVID.
func servePlain(dir string) (string, func(), error) {
	cfg, err := echo.MTLS(dir, true)
	if err != nil {
		return "", nil, err
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", nil, err
	}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(cfg)))
	echo.Register(srv)
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(lis) }()
	return lis.Addr().String(), func() { srv.Stop(); <-done }, nil
}

// serveMesh serves the echo from a mesh server with dir's bootstrap.
func serveMesh(ctx context.Context, dir string) (func(), error) {
	m, err := mesh.New(ctx, mesh.WithBootstrapFile(filepath.Join(dir, controlplane.BootstrapFile)), mesh.WithLogger(quietLogger()))
	if err != nil {
		return nil, err
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		m.Close()
		return nil, err
	}
	srv := m.NewGRPCServer()
	echo.Register(srv)
	done := make(chan struct{})
	go func() { defer close(done); srv.Serve(lis) }()
	return func() { srv.Stop(); <-done; m.Close() }, nil
}

// WriteMarkdown writes the clients side by side (with MeshBefore's
// column when it was measured), growth over the baseline, and the modules
// mesh's client links that the baseline does not.
func (c Clients) WriteMarkdown(w io.Writer) error {
	g, m, x := c[GRPCClient], c[MeshClient], c[XDSClient]
	if g == nil || m == nil || x == nil {
		return errors.New("not every client was measured")
	}
	names := []string{GRPCClient, MeshClient}
	if c[MeshBefore] != nil {
		names = append(names, MeshBefore)
	}
	names = append(names, XDSClient)
	row := func(label, goal string, cell func(r *ClientReport) string) {
		fmt.Fprintf(w, "| %s |", label)
		for _, n := range names {
			fmt.Fprintf(w, " %s |", cell(c[n]))
		}
		fmt.Fprintf(w, " %s |\n", goal)
	}
	size := func(b, base int64) string {
		if b == base {
			return fmt.Sprintf("%.1f MB", float64(b)/1e6)
		}
		return fmt.Sprintf("%.1f MB (+%.1f MB)", float64(b)/1e6, float64(b-base)/1e6)
	}
	fmt.Fprintf(w, "| client process | %s | mesh goal |\n|---|%s---|\n", strings.Join(names, " | "), strings.Repeat(" ---: |", len(names)))
	row("stripped binary", "growth <= 8 MB", func(r *ClientReport) string { return size(r.Binary, g.Binary) })
	row("stripped binary, -tags grpcnotrace", "growth <= 8 MB", func(r *ClientReport) string { return size(r.BinaryNoTrace, g.BinaryNoTrace) })
	row("modules linked", "only what it uses", func(r *ClientReport) string { return fmt.Sprint(len(r.Modules)) })
	row("goroutines after the first RPC", "<= 12", func(r *ClientReport) string { return fmt.Sprint(r.Goroutines) })
	row("live heap after the first RPC", "<= 2.5 MiB", func(r *ClientReport) string { return fmt.Sprintf("%.2f MiB", float64(r.HeapBytes)/(1<<20)) })
	row("process start to first answer", "<= grpc-go xDS", func(r *ClientReport) string { return fmt.Sprintf("%.1f ms", ms(r.FirstRPC)) })
	var extra []string
	for _, mod := range m.Modules {
		if !slices.Contains(g.Modules, mod) {
			extra = append(extra, "`"+mod+"`")
		}
	}
	fmt.Fprintf(w, "\nModules the mesh client links beyond the baseline's: %s.\n", strings.Join(extra, ", "))
	return nil
}

func ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
