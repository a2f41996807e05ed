package balancer

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	testpb "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"mesh/controlplane"
	"mesh/internal/testutil"
	"mesh/xdsclient"
)

// These tests run Istio YAML end to end: the embedded control plane turns
// it into xDS, a real xdsclient reads it, and a mesh channel routes RPCs to
// real gRPC backends that a ServiceEntry lists.

const yamlHost = "ledger.example.com"

// yamlEnv is a control plane and an xDS client of a client-only workload.
type yamlEnv struct {
	cp     *controlplane.Server
	client *xdsclient.Client
}

func newYAMLEnv(t *testing.T) *yamlEnv {
	t.Helper()
	checkNoLeaks(t)
	ctx := testutil.Context(t)
	cp, err := controlplane.New(ctx)
	if err != nil {
		t.Fatalf("controlplane.New: %v", err)
	}
	t.Cleanup(func() { _ = cp.Close() })
	path, err := cp.WriteBootstrap(t.TempDir(), controlplane.Workload{Name: "client"})
	if err != nil {
		t.Fatalf("WriteBootstrap: %v", err)
	}
	bs, err := xdsclient.LoadBootstrapFile(path)
	if err != nil {
		t.Fatalf("LoadBootstrapFile: %v", err)
	}
	client, err := xdsclient.New(bs)
	if err != nil {
		t.Fatalf("xdsclient.New: %v", err)
	}
	t.Cleanup(func() { _ = client.Close() })
	return &yamlEnv{cp: cp, client: client}
}

// apply applies the ServiceEntry for yamlHost:9000 with backends as its
// gRPC endpoints (labelled version: <backend name>), plus more YAML.
func (e *yamlEnv) apply(t *testing.T, backends []*backend, more string) {
	t.Helper()
	var eps []yamlEndpoint
	for _, b := range backends {
		eps = append(eps, yamlEndpoint{version: b.name, addr: b.addr})
	}
	e.applyService(t, "GRPC", eps, more)
}

// yamlEndpoint is a backend as a ServiceEntry lists it: with a version
// label, or a locality, or both.
type yamlEndpoint struct{ version, addr, locality string }

// applyService applies the ServiceEntry for yamlHost:9000, a port of
// protocol (GRPC or HTTP) with eps as its endpoints, plus more YAML.
func (e *yamlEnv) applyService(t *testing.T, protocol string, eps []yamlEndpoint, more string) {
	t.Helper()
	portName := strings.ToLower(protocol)
	var list strings.Builder
	for _, ep := range eps {
		port := ep.addr[strings.LastIndex(ep.addr, ":")+1:]
		fmt.Fprintf(&list, "  - {address: 127.0.0.1, ports: {%s: %s}", portName, port)
		if ep.version != "" {
			fmt.Fprintf(&list, ", labels: {version: %s}", ep.version)
		}
		if ep.locality != "" {
			fmt.Fprintf(&list, ", locality: %s", ep.locality)
		}
		list.WriteString("}\n")
	}
	yaml := `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ledger}
spec:
  hosts: [` + yamlHost + `]
  ports: [{number: 9000, name: ` + portName + `, protocol: ` + protocol + `}]
  resolution: STATIC
  endpoints:
` + list.String()
	if more != "" {
		yaml += "---\n" + more
	}
	if err := e.cp.Apply([]byte(yaml)); err != nil {
		t.Fatalf("Apply: %v", err)
	}
}

// dial opens a mesh channel to yamlHost:9000.
func (e *yamlEnv) dial(t *testing.T, opts ...Option) testgrpc.TestServiceClient {
	t.Helper()
	builder := NewResolverBuilder(e.client, opts...)
	conn, err := grpc.NewClient("mesh:///"+yamlHost+":9000", append(builder.DialOptions(), grpc.WithTransportCredentials(insecure.NewCredentials()))...)
	if err != nil {
		t.Fatalf("grpc.NewClient: %v", err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return testgrpc.NewTestServiceClient(conn)
}

// backendOf calls EmptyCall and returns the serving backend's name.
func backendOf(ctx context.Context, c testgrpc.TestServiceClient, opts ...grpc.CallOption) (string, error) {
	var hdr metadata.MD
	if _, err := c.EmptyCall(ctx, &testpb.Empty{}, append(opts, grpc.Header(&hdr))...); err != nil {
		return "", err
	}
	if v := hdr.Get("backend"); len(v) == 1 {
		return v[0], nil
	}
	return "", fmt.Errorf("response without backend header: %v", hdr)
}

// namedScripted is a scripted backend with a name, for the ServiceEntry.
func namedScripted(t *testing.T, name string, script func(context.Context, int64) error) (*backend, *scriptedService) {
	b, svc := startScriptedBackend(t, script)
	b.name = name
	return b, svc
}

// canaryYAML routes requests with "x-canary: yes" to subset v2 and the
// rest to v1, and aborts HTTP requests under /broken with 418.
const canaryYAML = `apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ledger}
spec:
  host: ` + yamlHost + `
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ledger}
spec:
  hosts: [` + yamlHost + `]
  http:
  - match: [{uri: {prefix: /broken}}]
    fault: {abort: {httpStatus: 418, percentage: {value: 100}}}
    route: [{destination: {host: ` + yamlHost + `, subset: v1}}]
  - match: [{headers: {x-canary: {exact: "yes"}}}]
    route: [{destination: {host: ` + yamlHost + `, subset: v2}}]
  - route: [{destination: {host: ` + yamlHost + `, subset: v1}}]
`

// TestYAMLHeaderMatchRouting: a VirtualService's header match sends
// canary calls to subset v2 and the rest to v1, over gRPC and over HTTP;
// over HTTP its fault aborts /broken with 418 before any backend sees it.
func TestYAMLHeaderMatchRouting(t *testing.T) {
	// call makes one call, with "x-canary: yes" if canary, and returns the
	// name of the backend that served it.
	body := func(t *testing.T, call func(ctx context.Context, canary bool) (string, error)) {
		ctx := testutil.Context(t)
		for range 10 {
			if name, err := call(ctx, true); err != nil || name != "v2" {
				t.Fatalf("call with x-canary: yes: %q, %v; want v2", name, err)
			}
			if name, err := call(ctx, false); err != nil || name != "v1" {
				t.Fatalf("call without x-canary: %q, %v; want v1", name, err)
			}
		}
	}
	t.Run("grpc", func(t *testing.T) {
		e := newYAMLEnv(t)
		v1, v2 := startBackend(t, "v1"), startBackend(t, "v2")
		e.apply(t, []*backend{v1, v2}, canaryYAML)
		c := e.dial(t)
		body(t, func(ctx context.Context, canary bool) (string, error) {
			if canary {
				ctx = metadata.AppendToOutgoingContext(ctx, "x-canary", "yes")
			}
			return backendOf(ctx, c, grpc.WaitForReady(true))
		})
	})
	t.Run("http", func(t *testing.T) {
		ctx := testutil.Context(t)
		e := newYAMLEnv(t)
		v1 := startHTTPBackend(t, "v1", http1Plain, nil)
		v2 := startHTTPBackend(t, "v2", http1Plain, nil)
		e.applyService(t, "HTTP", []yamlEndpoint{{version: "v1", addr: v1.addr}, {version: "v2", addr: v2.addr}}, canaryYAML)
		rt := NewRoundTripper(e.client, (&testDialer{}).dial)
		t.Cleanup(func() { _ = rt.Close() })
		client := &http.Client{Transport: rt}
		get := func(ctx context.Context, path string, canary bool) (*http.Response, error) {
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+yamlHost+":9000"+path, nil)
			if err != nil {
				return nil, err
			}
			if canary {
				req.Header.Set("x-canary", "yes")
			}
			resp, err := client.Do(req)
			if err != nil {
				return nil, err
			}
			_ = resp.Body.Close()
			return resp, nil
		}
		body(t, func(ctx context.Context, canary bool) (string, error) {
			resp, err := get(ctx, "/x", canary)
			if err != nil {
				return "", err
			}
			if resp.StatusCode != http.StatusOK {
				return "", fmt.Errorf("status %d from %q", resp.StatusCode, resp.Header.Get("backend"))
			}
			return resp.Header.Get("backend"), nil
		})
		if r, err := get(ctx, "/broken", false); err != nil {
			t.Errorf("GET /broken: %v", err)
		} else if r.StatusCode != http.StatusTeapot {
			t.Errorf("GET /broken: %d, want the injected 418", r.StatusCode)
		}
		if n := v1.hitsOf("/broken"); n != 0 {
			t.Errorf("backend saw %d aborted requests", n)
		}
	})
}

func TestYAMLRetriesTimeoutAndFault(t *testing.T) {
	ctx := testutil.Context(t)
	e := newYAMLEnv(t)
	var attempts atomic.Int64
	b, _ := namedScripted(t, "v1", func(ctx context.Context, _ int64) error {
		switch md, _ := metadata.FromIncomingContext(ctx); {
		case len(md.Get("block")) > 0:
			<-ctx.Done() // until the route timeout ends the RPC
			return ctx.Err()
		case len(md.Get("flaky")) > 0 && attempts.Add(1)%2 == 1:
			return status.Error(codes.Unavailable, "first attempt fails")
		}
		return nil
	})
	e.apply(t, []*backend{b}, `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ledger}
spec:
  hosts: [`+yamlHost+`]
  http:
  - match: [{uri: {prefix: /grpc.testing.TestService/UnaryCall}}]
    fault: {abort: {grpcStatus: PERMISSION_DENIED, percentage: {value: 100}}}
    route: [{destination: {host: `+yamlHost+`}}]
  - route: [{destination: {host: `+yamlHost+`}}]
    timeout: 0.2s
    retries: {attempts: 2, retryOn: unavailable}
`)
	c := e.dial(t)
	if _, err := c.EmptyCall(ctx, &testpb.Empty{}, grpc.WaitForReady(true)); err != nil {
		t.Fatalf("first RPC: %v", err)
	}
	// Retries: every first attempt fails, every RPC succeeds.
	flaky := metadata.AppendToOutgoingContext(ctx, "flaky", "1")
	for i := range 3 {
		if _, err := c.EmptyCall(flaky, &testpb.Empty{}); err != nil {
			t.Fatalf("flaky RPC %d: %v, want success after a retry", i, err)
		}
	}
	if n := attempts.Load(); n != 6 {
		t.Errorf("backend saw %d attempts for 3 RPCs, want 6", n)
	}
	// Timeout: a backend that never answers is cut off by the route.
	block := metadata.AppendToOutgoingContext(ctx, "block", "1")
	if _, err := c.EmptyCall(block, &testpb.Empty{}); status.Code(err) != codes.DeadlineExceeded {
		t.Errorf("blocking RPC: %v, want DeadlineExceeded from the route timeout", err)
	}
	// Fault: abort 100% on UnaryCall.
	for range 3 {
		if _, err := c.UnaryCall(ctx, &testpb.SimpleRequest{}); status.Code(err) != codes.PermissionDenied {
			t.Fatalf("UnaryCall: %v, want PermissionDenied from the fault", err)
		}
	}
}

func TestYAMLConnectionPoolMaxRequests(t *testing.T) {
	ctx := testutil.Context(t)
	e := newYAMLEnv(t)
	release := make(chan struct{})
	var blocked atomic.Int64
	b, _ := namedScripted(t, "v1", func(ctx context.Context, _ int64) error {
		if md, _ := metadata.FromIncomingContext(ctx); len(md.Get("block")) > 0 {
			blocked.Add(1)
			<-release
		}
		return nil
	})
	e.apply(t, []*backend{b}, `apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ledger}
spec:
  host: `+yamlHost+`
  trafficPolicy:
    connectionPool: {http: {http2MaxRequests: 1}}
`)
	c := e.dial(t)
	if _, err := c.EmptyCall(ctx, &testpb.Empty{}, grpc.WaitForReady(true)); err != nil {
		t.Fatalf("first RPC: %v", err)
	}
	done := make(chan error, 1)
	go func() {
		_, err := c.EmptyCall(metadata.AppendToOutgoingContext(ctx, "block", "1"), &testpb.Empty{})
		done <- err
	}()
	testutil.WaitFor(ctx, t, "the blocked RPC", func() bool { return blocked.Load() == 1 })
	_, err := c.EmptyCall(ctx, &testpb.Empty{})
	if status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "circuit breaker") {
		t.Errorf("RPC over http2MaxRequests: %v, want Unavailable from the circuit breaker", err)
	}
	close(release)
	if err := <-done; err != nil {
		t.Fatalf("blocked RPC: %v", err)
	}
}

func TestYAMLOutlierDetectionEjectsAFailingBackend(t *testing.T) {
	ctx := testutil.Context(t)
	e := newYAMLEnv(t)
	clock := newFakeClock()
	good, goodSvc := namedScripted(t, "good", func(context.Context, int64) error { return nil })
	bad, badSvc := namedScripted(t, "bad", func(context.Context, int64) error { return status.Error(codes.Internal, "broken") })
	e.apply(t, []*backend{good, bad}, `apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ledger}
spec:
  host: `+yamlHost+`
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 3, interval: 1s, baseEjectionTime: 30s, maxEjectionPercent: 50}
`)
	c := e.dial(t, WithClock(clock))
	testutil.WaitFor(ctx, t, "both backends to serve", func() bool {
		_, _ = c.EmptyCall(ctx, &testpb.Empty{}, grpc.WaitForReady(true))
		return goodSvc.calls.Load() > 0 && badSvc.calls.Load() > 0
	})
	for range 10 {
		_, _ = c.EmptyCall(ctx, &testpb.Empty{})
	}
	clock.waitTimers(ctx, t, 1)
	clock.Advance(time.Second)
	before := badSvc.calls.Load()
	for i := range 10 {
		if _, err := c.EmptyCall(ctx, &testpb.Empty{}); err != nil {
			t.Fatalf("RPC %d after the ejection: %v", i, err)
		}
	}
	if n := badSvc.calls.Load() - before; n != 0 {
		t.Errorf("ejected backend got %d RPCs", n)
	}
}

func TestYAMLConsistentHash(t *testing.T) {
	ctx := testutil.Context(t)
	e := newYAMLEnv(t)
	backends := []*backend{startBackend(t, "a"), startBackend(t, "b"), startBackend(t, "c")}
	e.apply(t, backends, `apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ledger}
spec:
  host: `+yamlHost+`
  trafficPolicy:
    loadBalancer: {consistentHash: {httpHeaderName: x-user}}
`)
	c := e.dial(t)
	// Wait until all three endpoints serve, so that later picks see the full ring.
	testutil.WaitFor(ctx, t, "every backend", func() bool {
		seen := map[string]bool{}
		for i := range 30 {
			name, err := backendOf(metadata.AppendToOutgoingContext(ctx, "x-user", fmt.Sprint("warm-", i)), c, grpc.WaitForReady(true))
			if err != nil {
				return false
			}
			seen[name] = true
		}
		return len(seen) == 3
	})
	users := map[string]bool{}
	for u := range 20 {
		uctx := metadata.AppendToOutgoingContext(ctx, "x-user", fmt.Sprint("user-", u))
		first, err := backendOf(uctx, c)
		if err != nil {
			t.Fatal(err)
		}
		users[first] = true
		for range 5 {
			if name, err := backendOf(uctx, c); err != nil || name != first {
				t.Fatalf("user-%d: %q, %v; want it to stick to %q", u, name, err, first)
			}
		}
	}
	// 20 users all on one of 3 backends would happen once in 3^19 runs.
	if len(users) < 2 {
		t.Errorf("20 users all hashed to %v", users)
	}

	// useSourceIp hashes the channel: one channel sticks to one backend.
	e.apply(t, backends, `apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ledger}
spec:
  host: `+yamlHost+`
  trafficPolicy:
    loadBalancer: {consistentHash: {useSourceIp: true}}
`)
	sticky := e.dial(t)
	var first string
	testutil.WaitFor(ctx, t, "the channel to stick to one backend", func() bool {
		first, _ = backendOf(ctx, sticky, grpc.WaitForReady(true))
		for range 10 {
			if name, err := backendOf(ctx, sticky); err != nil || name != first {
				return false
			}
		}
		return true
	})
}

func TestYAMLLocalityDistribute(t *testing.T) {
	ctx := testutil.Context(t)
	e := newYAMLEnv(t)
	a, b := startBackend(t, "a"), startBackend(t, "b")
	e.applyService(t, "GRPC", []yamlEndpoint{{addr: a.addr, locality: "r1/z1/s1"}, {addr: b.addr, locality: "r1/z2/s1"}}, `apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ledger}
spec:
  host: `+yamlHost+`
  trafficPolicy:
    loadBalancer:
      simple: ROUND_ROBIN
      localityLbSetting:
        distribute: [{from: "*", to: {"r1/z1/*": 25, "r1/z2/*": 75}}]
`)
	c := e.dial(t)
	counts := cycleCounts(ctx, t,
		func(ctx context.Context) (string, error) { return backendOf(ctx, c, grpc.WaitForReady(true)) },
		func(ctx context.Context) (string, error) { return backendOf(ctx, c) })
	if counts["a"] != 32 || counts["b"] != 96 {
		t.Errorf("split %v, want a:32 b:96 (localityLbSetting 25/75)", counts)
	}
}
