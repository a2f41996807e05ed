package sidecar

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/net/http2"

	"mesh/benchmarks/internal/sidecar/roles"
	"mesh/controlplane"
)

// The variants, in the order the report shows them.
const (
	// Plain grpc-go with mutual TLS (go-spiffe's tls.Config): the baseline.
	Plain = "B"
	// B with the grpc-go options mesh sets, which plain grpc-go users can
	// set too: the server runs calls on reused goroutines
	// (grpc.NumStreamWorkers, as many as a mesh server keeps), and both
	// ends fix their flow-control windows (no estimation pings). What mesh
	// gains from them is told apart from the rest.
	PlainWorkers = "Bw"
	// B whose client sends, on every call, the two headers a mesh call
	// carries beyond plain gRPC's (a new traceparent and x-request-id), so
	// that what they cost in grpc-go's transport is told apart from mesh's
	// code.
	PlainHeaders = "Bh"
	// The same plaintext client and server with an HAProxy mTLS pair
	// between them, in TCP mode: a stand-in for an Envoy sidecar pair
	// that forwards bytes and parses no HTTP, so it flatters the sidecars.
	Sidecars = "C"
	// C with the pair in HTTP mode, HTTP/2 on every hop: each proxy
	// decodes every request's and response's frames and headers and
	// encodes them again, as an Envoy sidecar's HTTP connection manager
	// does for gRPC in Istio (routing per request, retries and metrics per
	// response code need it).
	SidecarsHTTP = "C7"
	// mesh client to mesh server: xDS routing, STRICT mTLS, RBAC, Istio
	// metrics through the OpenTelemetry SDK (histograms handed to the
	// reader by telemetry/otelsdk's producer), tracing sampled parent-based
	// with a never-sample root.
	Mesh = "M"
	// Mesh with Istio's histograms recorded by the SDK's own synchronous
	// instruments (no producer on the reader).
	MeshSDK = "M-sdk"
	// Mesh with no-op meter and tracer providers.
	MeshLean = "M-lean"
	// Plain grpc-go + mTLS with grpc-go's OpenTelemetry metrics plugin
	// (google.golang.org/grpc/stats/opentelemetry) on the SDK.
	GRPCOTel = "G"
)

// Variants lists every variant.
var Variants = []string{Plain, PlainWorkers, PlainHeaders, Sidecars, SidecarsHTTP, Mesh, MeshSDK, MeshLean, GRPCOTel}

// Config sizes a run. Zero fields take the defaults in parentheses.
type Config struct {
	// Exe is the program of the measured processes, ./role (built into a
	// temporary directory by Run when empty, with BuildRole).
	Exe string
	// HAProxy is the haproxy binary (found on PATH).
	HAProxy string
	// Variants to measure (all, and with Before set M and M-lean again
	// from that executable).
	Variants []string
	// Before, when set, is the role program built from an earlier tree
	// (go build ./benchmarks/internal/sidecar/role in its checkout), whose
	// M and M-lean run as the variants M/before
	// and M-lean/before, for a before-and-after comparison in one run. A
	// tree older than the role program has its benchmarks/sidecar command
	// play the roles, with the harness's control plane in each process.
	Before string
	// Reps is how many times each variant runs each phase, variants taking
	// turns (3); the report shows medians.
	Reps int
	// One is the echoes sent one at a time per rep (5000).
	One int
	// Eight is the echoes sent 8 at a time per rep (100000: seconds, so
	// that CPU per request, read in 10 ms ticks, settles on a busy machine).
	Eight int
	// Slices splits each rep's Eight into this many parts, the variants
	// taking turns part by part (5), so that a drift of the machine over
	// seconds falls on every variant alike rather than on whichever ran
	// its whole phase then.
	Slices int
	// OpenRate and Open: Open echoes sent at OpenRate per second per rep,
	// whether or not earlier ones were answered (1000/s, 5000).
	OpenRate, Open int
	// AppHeader, when set, has every client send one header of the
	// program's own on every call (echo.WithAppHeader), as calls carrying an
	// auth token or a tenant do, for every variant alike.
	AppHeader bool
	// Stderr receives the processes' standard error (os.Stderr).
	Stderr io.Writer
	// Progress, when set, is told what is being measured.
	Progress func(string)
}

func (c *Config) defaults() error {
	if len(c.Variants) == 0 {
		c.Variants = slices.Clone(Variants)
		if c.Before != "" {
			c.Variants = append(c.Variants, Mesh+Before, MeshLean+Before)
		}
	}
	if (slices.Contains(c.Variants, Sidecars) || slices.Contains(c.Variants, SidecarsHTTP)) && c.HAProxy == "" {
		p, err := exec.LookPath("haproxy")
		if err != nil {
			return fmt.Errorf("variants C and C7 need haproxy: %w", err)
		}
		c.HAProxy = p
	}
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&c.Reps, 3)
	def(&c.One, 5000)
	def(&c.Eight, 100000)
	def(&c.Slices, 5)
	c.Slices = min(c.Slices, c.Eight)
	def(&c.OpenRate, 1000)
	def(&c.Open, 5000)
	if c.Stderr == nil {
		c.Stderr = os.Stderr
	}
	if c.Progress == nil {
		c.Progress = func(string) {}
	}
	return nil
}

// RolePackage is the role program's package in mesh's module.
const RolePackage = "./benchmarks/internal/sidecar/role"

// BuildRole builds the role program of the mesh module the working
// directory is in (go env GOMOD) into dir and returns its path; the build's
// errors go to stderr.
func BuildRole(ctx context.Context, dir string, stderr io.Writer) (string, error) {
	root, err := moduleRoot(ctx)
	if err != nil {
		return "", err
	}
	exe := filepath.Join(dir, "role")
	build := exec.CommandContext(ctx, "go", "build", "-o", exe, RolePackage)
	build.Dir, build.Stderr = root, stderr
	if err := build.Run(); err != nil {
		return "", fmt.Errorf("building %s: %w", RolePackage, err)
	}
	return exe, nil
}

// moduleRoot is the directory of the go.mod the working directory is in.
func moduleRoot(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil || !strings.HasSuffix(strings.TrimSpace(string(out)), "go.mod") {
		return "", fmt.Errorf("finding mesh's module: go env GOMOD said %q: %v", out, err)
	}
	return filepath.Dir(strings.TrimSpace(string(out))), nil
}

// Phase names a load shape.
type Phase int

const (
	// One in flight: latency.
	One Phase = iota
	// Eight in flight: throughput and CPU.
	Eight
	// Open loop at a fixed rate: latency from the intended send time.
	Open
	numPhases
)

// Measurement is one phase of one variant in one rep.
type Measurement struct {
	N          int
	Elapsed    time.Duration
	P50, P99   time.Duration            // zero for a phase run in slices
	CPU        map[string]time.Duration // by process role: client, server, proxy...
	Throughput float64                  // requests per second
}

// add is m and the next slice of its phase, o, as one measurement.
func (m Measurement) add(o Measurement) Measurement {
	sum := Measurement{N: m.N + o.N, Elapsed: m.Elapsed + o.Elapsed, CPU: maps.Clone(o.CPU)}
	for name, d := range m.CPU {
		sum.CPU[name] += d
	}
	sum.Throughput = float64(sum.N) / max(sum.Elapsed.Seconds(), 1e-9)
	return sum
}

// CPUPerRequest is the CPU time all processes spent per request.
func (m Measurement) CPUPerRequest() time.Duration {
	var sum time.Duration
	for _, d := range m.CPU {
		sum += d
	}
	return sum / time.Duration(max(m.N, 1))
}

// Results holds every measurement of a run: [variant][phase][rep].
type Results struct {
	Config Config
	Runs   map[string][numPhases][]Measurement
}

// Run measures the variants side by side. It starts the embedded control
// plane in this process, and every client, server and proxy as a process
// of its own, so that each one's CPU time can be read from /proc.
func Run(ctx context.Context, cfg Config) (*Results, error) {
	if err := cfg.defaults(); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	tmp, err := os.MkdirTemp("", "mesh-sidecar-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	if cfg.Exe == "" {
		if cfg.Exe, err = BuildRole(ctx, tmp, cfg.Stderr); err != nil {
			return nil, err
		}
	}
	cp, dirs, err := startControlPlane(ctx, tmp)
	if err != nil {
		return nil, err
	}
	defer cp.Close()

	var procs procSet
	defer procs.stop()
	stopOnCancel := context.AfterFunc(ctx, procs.kill)
	defer stopOnCancel()

	clients := map[string]*proc{}
	for _, v := range cfg.Variants {
		c, err := startVariant(ctx, &cfg, &procs, v, dirs, tmp)
		if err != nil {
			return nil, fmt.Errorf("starting %s: %w", v, err)
		}
		clients[v] = c
	}

	res := &Results{Config: cfg, Runs: map[string][numPhases][]Measurement{}}
	run := func(rep int, v, cmd string) (Measurement, error) {
		cfg.Progress(fmt.Sprintf("rep %d/%d: %s %s", rep+1, cfg.Reps, v, cmd))
		m, err := measure(procs.of(v), clients[v], cmd)
		if err != nil {
			return m, fmt.Errorf("%s, %s: %w", v, cmd, err)
		}
		return m, nil
	}
	for rep := range cfg.Reps {
		// Rotate who goes first, so no variant always follows the same one.
		order := append(slices.Clone(cfg.Variants[rep%len(cfg.Variants):]), cfg.Variants[:rep%len(cfg.Variants)]...)
		record := func(v string, ph Phase, m Measurement) {
			runs := res.Runs[v]
			runs[ph] = append(runs[ph], m)
			res.Runs[v] = runs
		}
		for _, v := range order {
			m, err := run(rep, v, fmt.Sprintf("closed 1 %d", cfg.One))
			if err != nil {
				return nil, err
			}
			record(v, One, m)
		}
		eight := map[string]Measurement{}
		for slice := range cfg.Slices {
			n := cfg.Eight/cfg.Slices + boolInt(slice < cfg.Eight%cfg.Slices)
			for _, v := range order {
				m, err := run(rep, v, fmt.Sprintf("closed 8 %d", n))
				if err != nil {
					return nil, err
				}
				eight[v] = eight[v].add(m)
			}
		}
		for _, v := range order {
			record(v, Eight, eight[v])
			m, err := run(rep, v, fmt.Sprintf("open %d %d", cfg.OpenRate, cfg.Open))
			if err != nil {
				return nil, err
			}
			record(v, Open, m)
		}
	}
	return res, nil
}

// Before marks a variant run by Config.Before's executable: "M" + Before.
const Before = "/before"

// meshServices are the echo services of the mesh variants, one each, so
// that no client's traffic reaches another variant's server.
var meshServices = map[string]string{
	Mesh: "echo", MeshSDK: "echo-sdk", MeshLean: "echo-lean", Mesh + Before: "echo-before", MeshLean + Before: "echo-lean-before",
}

// meshYAML: STRICT mTLS, RBAC that lets only the client's identity call
// the echo, and a VirtualService per echo service.
func meshYAML() []byte {
	y := []byte(`apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: default}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: echo-from-client, namespace: default}
spec:
  selector: {matchLabels: {app: echo}}
  action: ALLOW
  rules:
  - from:
    - source: {principals: ["cluster.local/ns/default/sa/client"]}
    to:
    - operation: {paths: ["/mesh.bench.Echo/*"]}
`)
	for _, svc := range slices.Sorted(maps.Values(meshServices)) {
		y = fmt.Appendf(y, `---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: %[1]s, namespace: default}
spec:
  hosts: [%[1]s.default.svc.cluster.local]
  http:
  - route:
    - destination: {host: %[1]s.default.svc.cluster.local}
`, svc)
	}
	return y
}

// workloads: a server and a client per echo service; the server's SVID
// and the client's also serve B, C and G.
func workloads() []controlplane.Workload {
	var wls []controlplane.Workload
	for _, svc := range slices.Sorted(maps.Values(meshServices)) {
		wls = append(wls, controlplane.Workload{Name: svc, Namespace: "default", ServiceAccount: "echo", Service: svc, Port: 8080,
			Labels: map[string]string{"app": "echo", "version": "v1"}},
			controlplane.Workload{Name: "client-" + svc, Namespace: "default", ServiceAccount: "client",
				Labels: map[string]string{"app": "client", "version": "v1"}})
	}
	return wls
}

// startControlPlane starts the embedded control plane with meshYAML and
// writes every workload's directory under tmp.
func startControlPlane(ctx context.Context, tmp string) (*controlplane.Server, map[string]string, error) {
	cp, err := controlplane.New(ctx, controlplane.WithLogger(quietLogger()))
	if err != nil {
		return nil, nil, err
	}
	if err := cp.Apply(meshYAML()); err != nil {
		cp.Close()
		return nil, nil, err
	}
	dirs := map[string]string{}
	for _, wl := range workloads() {
		dirs[wl.Name] = filepath.Join(tmp, wl.Name)
		if _, err := cp.WriteBootstrap(dirs[wl.Name], wl); err != nil {
			cp.Close()
			return nil, nil, err
		}
	}
	return cp, dirs, nil
}

// startVariant starts v's server side and client, and returns the client
// once it has warmed up.
func startVariant(ctx context.Context, cfg *Config, ps *procSet, v string, dirs map[string]string, tmp string) (*proc, error) {
	server := func(mode, dir string) (string, error) {
		args := "-mode " + mode
		if dir != "" {
			args += " -dir " + dir
		}
		p, err := ps.startRole(cfg, v, "server", args)
		if err != nil {
			return "", err
		}
		line, err := p.line()
		if err != nil {
			return "", err
		}
		addr, ok := strings.CutPrefix(line, "ready ")
		if !ok {
			return "", fmt.Errorf("server said %q, not ready", line)
		}
		return addr, nil
	}
	var mode, clientDir, target string
	switch v {
	case Plain, PlainWorkers, PlainHeaders, GRPCOTel:
		addr, err := server(v, dirs["echo"])
		if err != nil {
			return nil, err
		}
		mode, clientDir, target = v, dirs["client-echo"], addr
	case Sidecars, SidecarsHTTP:
		app, err := server("plain", "")
		if err != nil {
			return nil, err
		}
		inbound, err := ps.startHAProxy(ctx, cfg, tmp, v, "proxy-server", dirs["echo"], app, true)
		if err != nil {
			return nil, err
		}
		outbound, err := ps.startHAProxy(ctx, cfg, tmp, v, "proxy-client", dirs["client-echo"], inbound, false)
		if err != nil {
			return nil, err
		}
		if err := checkPairMode(ctx, outbound, v == SidecarsHTTP); err != nil {
			return nil, err
		}
		mode, target = "plain", outbound
	case Mesh, MeshSDK, MeshLean, Mesh + Before, MeshLean + Before:
		mode = strings.TrimSuffix(v, Before)
		svc := meshServices[v]
		if _, err := server(mode, dirs[svc]); err != nil {
			return nil, err
		}
		clientDir, target = dirs["client-"+svc], svc+".default.svc.cluster.local:8080"
	default:
		return nil, fmt.Errorf("unknown variant %q", v)
	}
	c, err := ps.startRole(cfg, v, "client", clientArgs(cfg, mode, target, clientDir))
	if err != nil {
		return nil, err
	}
	if line, err := c.line(); err != nil || line != "ready" {
		return nil, fmt.Errorf("client not ready: %q, %v", line, err)
	}
	return c, nil
}

// clientArgs are the role program's arguments for a client of mode that
// sends to target, with its workload in dir (none if empty).
func clientArgs(cfg *Config, mode, target, dir string) string {
	args := "-mode " + mode + " -target " + target
	if dir != "" {
		args += " -dir " + dir
	}
	if cfg.AppHeader {
		args += " -app-header"
	}
	return args
}

// haproxyConfig is one sidecar of the pair: one thread, TLS terminated
// (inbound: bind with the server's SVID, client certificate required) or
// originated (outbound: the client's SVID, server certificate verified
// against the trust domain's root). In HTTP mode every hop speaks HTTP/2:
// prior knowledge in the clear to and from the applications, ALPN h2
// between the proxies.
func haproxyConfig(listen, upstream, crt, ca string, inbound, http bool) string {
	bind := "bind " + listen
	srv := "server app " + upstream
	tls := " ssl crt " + crt + " ca-file " + ca + " verify required"
	mode, appHop := "tcp", "" // appHop: options of the hop to or from the application
	if http {
		mode, tls, appHop = "http", tls+" alpn h2", " proto h2"
	}
	if inbound {
		bind += tls
		srv += appHop
	} else {
		srv += tls
		bind += appHop
	}
	return `global
	nbthread 1
	maxconn 1000
defaults
	mode ` + mode + `
	timeout connect 10s
	timeout client 30m
	timeout server 30m
frontend in
	` + bind + `
	default_backend app
backend app
	` + srv + "\n"
}

// startHAProxy starts one sidecar of variant's pair (C or C7) and returns
// the address it listens on.
func (ps *procSet) startHAProxy(ctx context.Context, cfg *Config, tmp, variant, name, certDir, upstream string, inbound bool) (string, error) {
	chain, err := os.ReadFile(filepath.Join(certDir, controlplane.CertChainFile))
	if err != nil {
		return "", err
	}
	key, err := os.ReadFile(filepath.Join(certDir, controlplane.KeyFile))
	if err != nil {
		return "", err
	}
	crt := filepath.Join(tmp, variant+"-"+name+".pem")
	if err := os.WriteFile(crt, append(chain, key...), 0o600); err != nil {
		return "", err
	}
	listen, err := freeAddr()
	if err != nil {
		return "", err
	}
	conf := filepath.Join(tmp, variant+"-"+name+".cfg")
	ca := filepath.Join(certDir, controlplane.RootCertFile)
	if err := os.WriteFile(conf, []byte(haproxyConfig(listen, upstream, crt, ca, inbound, variant == SidecarsHTTP)), 0o600); err != nil {
		return "", err
	}
	cmd := exec.Command(cfg.HAProxy, "-db", "-f", conf)
	p, err := ps.start(variant, name, cmd, cfg.Stderr)
	if err != nil {
		return "", err
	}
	// Ready when it accepts connections.
	for {
		c, err := net.DialTimeout("tcp", listen, time.Second)
		if err == nil {
			c.Close()
			return listen, nil
		}
		if exited(p.cmd.Process.Pid) {
			return "", fmt.Errorf("haproxy %s exited; its output above says why", name)
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("haproxy %s never listened on %s: %w", name, listen, err)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// checkPairMode makes sure the pair at addr runs in the mode its variant
// says: that in HTTP mode the client's sidecar terminates HTTP/2 itself,
// and in TCP mode passes the application's bytes through. HAProxy's
// HTTP/2 layer announces extended CONNECT (RFC 8441) in its SETTINGS,
// which grpc-go never does, so whose SETTINGS answer a connection preface
// tells the two apart.
func checkPairMode(ctx context.Context, addr string, http bool) error {
	conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	// A hang guard only, generous: a proxy that never answers must fail
	// the run, not stall it, even when ctx has no deadline of its own.
	dl := time.Now().Add(time.Minute)
	if d, ok := ctx.Deadline(); ok && d.Before(dl) {
		dl = d
	}
	conn.SetDeadline(dl)
	if _, err := io.WriteString(conn, http2.ClientPreface); err != nil {
		return err
	}
	fr := http2.NewFramer(conn, conn)
	if err := fr.WriteSettings(); err != nil {
		return err
	}
	for {
		f, err := fr.ReadFrame()
		if err != nil {
			return fmt.Errorf("no SETTINGS from %s: %w", addr, err)
		}
		sf, ok := f.(*http2.SettingsFrame)
		if !ok || sf.IsAck() {
			continue
		}
		_, proxy := sf.Value(http2.SettingEnableConnectProtocol)
		switch {
		case http && !proxy:
			return fmt.Errorf("the sidecar at %s does not speak HTTP/2 itself: the application's SETTINGS came through", addr)
		case !http && proxy:
			return fmt.Errorf("the sidecar at %s answered in HTTP/2 itself, not as a TCP proxy", addr)
		}
		return nil
	}
}

// freeAddr returns a loopback address nothing listens on right now, for
// haproxy, which cannot report a port it picked itself.
func freeAddr() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// measure runs one phase on client and reads every process's CPU time
// around it.
func measure(ps []*proc, client *proc, cmd string) (Measurement, error) {
	before := map[string]time.Duration{}
	for _, p := range ps {
		t, err := cpuTime(p.cmd.Process.Pid)
		if err != nil {
			return Measurement{}, err
		}
		before[p.name] = t
	}
	if _, err := io.WriteString(client.stdin, cmd+"\n"); err != nil {
		return Measurement{}, err
	}
	line, err := client.line()
	if err != nil {
		return Measurement{}, err
	}
	var r roles.PhaseResult
	if err := json.Unmarshal([]byte(line), &r); err != nil {
		return Measurement{}, fmt.Errorf("client answered %q: %w", line, err)
	}
	if r.Err != "" {
		return Measurement{}, errors.New(r.Err)
	}
	m := Measurement{N: r.N, Elapsed: r.Elapsed, P50: r.P50, P99: r.P99, CPU: map[string]time.Duration{},
		Throughput: float64(r.N) / r.Elapsed.Seconds()}
	for _, p := range ps {
		t, err := cpuTime(p.cmd.Process.Pid)
		if err != nil {
			return Measurement{}, err
		}
		m.CPU[p.name] = t - before[p.name]
	}
	return m, nil
}

// userHZ is the unit of /proc/<pid>/stat's CPU times; Linux fixes it at
// 100 for user space on every architecture Go supports.
const userHZ = 100

// cpuTime reads the user and system CPU time of every thread of process
// pid, living and exited.
func cpuTime(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name, in parentheses, may hold spaces; fields after it
	// start at the process state (field 3). utime and stime are 14 and 15.
	i := strings.LastIndexByte(string(b), ')')
	f := strings.Fields(string(b[i+1:]))
	if i < 0 || len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: unexpected format", pid)
	}
	utime, err1 := strconv.ParseInt(f[11], 10, 64)
	stime, err2 := strconv.ParseInt(f[12], 10, 64)
	if err := errors.Join(err1, err2); err != nil {
		return 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
	}
	return time.Duration(utime+stime) * time.Second / userHZ, nil
}

// exited reports whether process pid has ended (a zombie until waited for).
func exited(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return true
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+1:]))
	return len(f) == 0 || f[0] == "Z"
}

// proc is one child process.
type proc struct {
	variant, name string
	cmd           *exec.Cmd
	stdin         io.WriteCloser
	out           *bufio.Scanner
}

// line reads the next line the process printed.
func (p *proc) line() (string, error) {
	if p.out.Scan() {
		return p.out.Text(), nil
	}
	err := p.out.Err()
	if err == nil {
		err = io.ErrUnexpectedEOF
	}
	return "", fmt.Errorf("%s %s: %w", p.variant, p.name, err)
}

// procSet owns the child processes: stop ends them all and waits.
type procSet struct {
	mu    sync.Mutex
	procs []*proc
}

func (ps *procSet) startRole(cfg *Config, variant, role, args string) (*proc, error) {
	exe := cfg.Exe
	if strings.HasSuffix(variant, Before) {
		exe = cfg.Before
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), roles.Env+"="+role, roles.Env+"_ARGS="+args)
	return ps.start(variant, role, cmd, cfg.Stderr)
}

func (ps *procSet) start(variant, name string, cmd *exec.Cmd, stderr io.Writer) (*proc, error) {
	cmd.Stderr = stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	p := &proc{variant: variant, name: name, cmd: cmd, stdin: stdin, out: bufio.NewScanner(stdout)}
	ps.mu.Lock()
	ps.procs = append(ps.procs, p)
	ps.mu.Unlock()
	return p, nil
}

func (ps *procSet) of(variant string) []*proc {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	var out []*proc
	for _, p := range ps.procs {
		if p.variant == variant {
			out = append(out, p)
		}
	}
	return out
}

// kill ends every process at once (the run was cancelled).
func (ps *procSet) kill() {
	ps.mu.Lock()
	defer ps.mu.Unlock()
	for _, p := range ps.procs {
		p.cmd.Process.Kill()
	}
}

// stop closes every process's standard input, which ends the harness's
// own roles, then kills what is left (haproxy) and waits for all.
func (ps *procSet) stop() {
	ps.mu.Lock()
	procs := ps.procs
	ps.procs = nil
	ps.mu.Unlock()
	// Clients first, so no server sees its client vanish mid-call.
	slices.SortStableFunc(procs, func(a, b *proc) int {
		return boolInt(a.name != "client") - boolInt(b.name != "client")
	})
	for _, p := range procs {
		p.stdin.Close()
		if p.name != "client" && p.name != "server" {
			p.cmd.Process.Kill() // haproxy
		}
		done := make(chan struct{})
		go func() { p.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(time.Minute): // a hang guard, not a budget
			p.cmd.Process.Kill()
			<-done
		}
	}
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}
