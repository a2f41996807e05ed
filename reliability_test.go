package mesh_test

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"mesh"
	"mesh/controlplane"
	"mesh/internal/shop"
	"mesh/internal/testutil"
)

// hasInboundListener reports whether resources carry a server listener,
// that is whether the node serves and has asked for its inbound listener.
func hasInboundListener(resources map[string][]types.Resource) bool {
	for _, r := range resources[resource.ListenerType] {
		if named, ok := r.(interface{ GetName() string }); ok && strings.HasPrefix(named.GetName(), controlplane.InboundListenerPrefix) {
			return true
		}
	}
	return false
}

func TestControlPlaneRestartUnderLoad(t *testing.T) {
	ctx := testutil.Context(t)
	// The test holds the CA's key, so the second control plane can sign
	// with the same root and the workloads' SVIDs stay valid.
	_, signWithCA := testCA(t)
	// The embedded control plane learns endpoints from connected servers
	// (istiod reads them from Kubernetes), so checkout must resubscribe
	// after payments or it would get empty endpoints: its reconnect
	// backoff waits for this gate, opened when the new control plane has
	// both payments servers.
	gate := make(chan struct{})
	var gateOnce sync.Once
	openGate := func() { gateOnce.Do(func() { close(gate) }) }
	var checkoutWaits atomic.Int64
	meshOpts := func(wl controlplane.Workload, _ string) []mesh.Option {
		if wl.Service == "payments" {
			return []mesh.Option{mesh.WithXDSBackoff(func(int) time.Duration { return 5 * time.Millisecond })}
		}
		return []mesh.Option{mesh.WithXDSBackoff(func(int) time.Duration {
			checkoutWaits.Add(1)
			<-gate
			return 5 * time.Millisecond
		})}
	}
	w := shop.StartWorldWith(t, ctx, shop.WorldConfig{V1: 100, V2: 0},
		shop.WorldOptions{ControlPlane: []controlplane.Option{signWithCA}, Mesh: meshOpts})
	t.Cleanup(openGate) // runs before the meshes close
	addr := w.ControlPlane.Addr()

	l := shop.StartLoad(ctx, t, 4, func(ctx context.Context) error { _, err := shop.Charge(ctx, w.Conn); return err })
	l.WaitCalls(ctx, t, 100)

	if err := w.ControlPlane.Close(); err != nil {
		t.Fatal(err)
	}
	// Calls go on while the control plane is down: routes, clusters and
	// endpoints are the last good ones, and connections are direct.
	l.WaitCalls(ctx, t, 500)
	if checkoutWaits.Load() == 0 {
		t.Fatal("checkout never noticed the control plane was down")
	}
	if n, first := l.Failures(); n != 0 {
		t.Fatalf("%d calls failed while the control plane was down; first: %v", n, first)
	}

	hook := whenServersPushed(2, openGate)
	cp2, err := controlplane.New(ctx, controlplane.WithAddress(addr), signWithCA,
		controlplane.WithLogger(shop.TestLogger(t)), controlplane.WithWorkloads(shop.Workloads()...), controlplane.WithSnapshotHook(hook))
	if err != nil {
		t.Fatalf("restarting the control plane on %s: %v", addr, err)
	}
	t.Cleanup(func() { cp2.Close() })
	if err := cp2.Apply(shop.MeshYAML(100, 0)); err != nil {
		t.Fatal(err)
	}
	select {
	case <-gate:
	case <-ctx.Done():
		t.Fatal("the payments servers never resubscribed to the new control plane")
	}
	// A flip on the new control plane reaches checkout only if it
	// resubscribed there.
	if err := cp2.Apply(shop.MeshYAML(0, 100)); err != nil {
		t.Fatal(err)
	}
	if err := shop.WaitFor(ctx, w.Conn, 20, func(r shop.Reply) bool { return r.Version == "v2" }); err != nil {
		t.Fatalf("flip on the new control plane: %v", err)
	}
	l.Check(t, "control plane down and restarted", 1)
}

func TestRestartFromCacheWhileControlPlaneDown(t *testing.T) {
	ctx := testutil.Context(t)
	cachePath := func(dir string) string { return filepath.Join(dir, "xds-cache") }
	w := shop.StartWorldWith(t, ctx, shop.WorldConfig{V1: 0, V2: 100}, shop.WorldOptions{
		Mesh: func(_ controlplane.Workload, dir string) []mesh.Option {
			return []mesh.Option{mesh.WithXDSCache(cachePath(dir))}
		},
	})
	dir := w.Dirs["checkout"]
	// Stop checkout (Close writes the cache's last changes), then the
	// control plane; payments keep serving.
	w.Conn.Close()
	if err := w.Checkout.Close(); err != nil {
		t.Fatal(err)
	}
	if err := w.ControlPlane.Close(); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(cachePath(dir)); err != nil || fi.Size() == 0 {
		t.Fatalf("checkout left no cache: %v", err)
	}

	bs, err := shop.LoadBootstrap(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	m, err := mesh.New(ctx, mesh.WithBootstrap(bs), mesh.WithXDSCache(cachePath(dir)), mesh.WithLogger(shop.TestLogger(t)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	conn, err := m.Dial(shop.PaymentsTarget)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	split := shop.Run(ctx, conn, 200, 4)
	if split.Failed() != 0 || split.Count("v2") != 200 {
		t.Fatalf("restarted from the cache with the control plane down: %s, want all 200 on v2", split)
	}
}

type servingEvent struct {
	addr    net.Addr
	serving bool
	err     error
}

// Both kinds of server stop serving when the control plane removes their
// inbound listener, and serve again when it comes back (gRFC A36).
func TestServingStateFollowsInboundListener(t *testing.T) {
	for _, kind := range []string{"grpc", "http"} {
		t.Run(kind, func(t *testing.T) { testServingState(t, kind) })
	}
}

func testServingState(t *testing.T, kind string) {
	ctx := testutil.Context(t)
	workload := map[string]string{"grpc": "payments-v1", "http": "web-v1"}[kind]
	var drop atomic.Bool
	hook := func(nodeID string, resources map[string][]types.Resource) {
		if !drop.Load() || !strings.Contains(nodeID, "~"+workload+".") {
			return
		}
		ls := resources[resource.ListenerType][:0:0]
		for _, r := range resources[resource.ListenerType] {
			if named, ok := r.(interface{ GetName() string }); ok && strings.HasPrefix(named.GetName(), controlplane.InboundListenerPrefix) {
				continue
			}
			ls = append(ls, r)
		}
		resources[resource.ListenerType] = ls
	}
	events := make(chan servingEvent, 64)
	report := mesh.WithServingStateCallback(func(addr net.Addr, serving bool, err error) {
		events <- servingEvent{addr, serving, err}
	})
	w := shop.StartWorldWith(t, ctx, shop.WorldConfig{V1: 100, V2: 0, SnapshotHook: hook}, shop.WorldOptions{
		Mesh: func(wl controlplane.Workload, _ string) []mesh.Option {
			if wl.Name != workload {
				return nil
			}
			return []mesh.Option{report}
		},
	})
	addr := w.Payments["v1"]
	// works reports whether a new client connection gets an answer.
	works := func() error {
		conn, err := w.Checkout.Dial(shop.PaymentsTarget)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		_, err = shop.Charge(ctx, conn)
		return err
	}
	if kind == "http" {
		addr = shop.StartWeb(t, ctx, w.ControlPlane, "v1", report)
		works = func() error {
			// A client of its own, so its connection is a new one.
			bs, err := shop.LoadBootstrap(w.Dirs["checkout"], 0)
			if err != nil {
				t.Fatal(err)
			}
			m, err := mesh.New(ctx, mesh.WithBootstrap(bs), mesh.WithLogger(shop.TestLogger(t)))
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			_, err = shop.GetVersion(ctx, m.HTTPClient(), shop.WebURL)
			return err
		}
	}
	next := func() servingEvent {
		t.Helper()
		select {
		case ev := <-events:
			if ev.addr.String() != addr.String() {
				t.Fatalf("serving state for %s, want %s", ev.addr, addr)
			}
			return ev
		case <-ctx.Done():
			t.Fatal("no serving state change reported")
			return servingEvent{}
		}
	}
	if ev := next(); !ev.serving || ev.err != nil {
		t.Fatalf("first state: serving=%t err=%v, want serving", ev.serving, ev.err)
	}
	if err := works(); err != nil {
		t.Fatalf("while serving: %v", err)
	}

	drop.Store(true)
	if err := w.ControlPlane.Apply(shop.MeshYAML(100, 0)); err != nil { // pushes
		t.Fatal(err)
	}
	ev := next()
	if ev.serving || !errors.Is(ev.err, mesh.ErrListenerNotFound) || !strings.Contains(ev.err.Error(), controlplane.InboundListenerPrefix+addr.String()) {
		t.Fatalf("after removal: serving=%t err=%v, want not serving because the listener resource is gone", ev.serving, ev.err)
	}
	// A new connection is closed at once, before any handshake.
	raw, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr.String())
	if err != nil {
		t.Fatal(err)
	}
	deadline, _ := ctx.Deadline()
	raw.SetReadDeadline(deadline)
	if n, err := raw.Read(make([]byte, 1)); n != 0 || err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("new connection to a server that is not serving: read %d bytes, %v; want it closed", n, err)
	}
	raw.Close()
	if err := works(); err == nil {
		t.Fatal("a new client connection was served while not serving")
	}

	drop.Store(false)
	if err := w.ControlPlane.Apply(shop.MeshYAML(100, 0)); err != nil {
		t.Fatal(err)
	}
	if ev := next(); !ev.serving || ev.err != nil {
		t.Fatalf("after restoring: serving=%t err=%v, want serving", ev.serving, ev.err)
	}
	if err := works(); err != nil {
		t.Fatalf("new connection after serving again: %v", err)
	}
}

func TestTwoHundredGRPCFlipsUnderLoad(t *testing.T) {
	ctx := testutil.Context(t)
	w := shop.StartWorld(t, ctx, shop.WorldConfig{V1: 100, V2: 0})
	l := shop.StartLoad(ctx, t, 4, func(ctx context.Context) error { _, err := shop.Charge(ctx, w.Conn); return err })
	// 100/0 and 0/100 in turn: one reply from the other version proves
	// the push arrived, since the old split could not produce it.
	for i := range 200 {
		v1, v2, want := 100, 0, "v1"
		if i%2 == 0 {
			v1, v2, want = 0, 100, "v2"
		}
		if err := w.ControlPlane.Apply(shop.MeshYAML(v1, v2)); err != nil {
			t.Fatal(err)
		}
		if err := shop.WaitFor(ctx, w.Conn, 1, func(r shop.Reply) bool { return r.Version == want }); err != nil {
			t.Fatalf("flip %d to %d/%d: %v", i, v1, v2, err)
		}
	}
	l.Check(t, "200 gRPC flips", 1)
}

func TestTwoHundredHTTPFlipsUnderLoad(t *testing.T) {
	ctx := testutil.Context(t)
	w := shop.StartWorld(t, ctx, shop.WorldConfig{V1: 100, V2: 0})
	shop.StartWeb(t, ctx, w.ControlPlane, "v1")
	shop.StartWeb(t, ctx, w.ControlPlane, "v2")
	if err := w.ControlPlane.Apply(shop.WebYAML(100, 0)); err != nil {
		t.Fatal(err)
	}
	client := w.Checkout.HTTPClient()
	waitVersion := func(want string) error {
		var last error
		for {
			got, err := shop.GetVersion(ctx, client, shop.WebURL)
			if err == nil && got == want {
				return nil
			}
			if err != nil {
				last = err
			}
			select {
			case <-ctx.Done():
				return errors.Join(ctx.Err(), last)
			case <-time.After(time.Millisecond):
			}
		}
	}
	if err := waitVersion("v1"); err != nil {
		t.Fatalf("web never answered: %v", err)
	}
	l := shop.StartLoad(ctx, t, 4, func(ctx context.Context) error { _, err := shop.GetVersion(ctx, client, shop.WebURL); return err })
	for i := range 200 {
		v1, v2, want := 100, 0, "v1"
		if i%2 == 0 {
			v1, v2, want = 0, 100, "v2"
		}
		if err := w.ControlPlane.Apply(shop.WebYAML(v1, v2)); err != nil {
			t.Fatal(err)
		}
		if err := waitVersion(want); err != nil {
			t.Fatalf("flip %d to %d/%d: %v", i, v1, v2, err)
		}
	}
	l.Check(t, "200 HTTP flips", 1)
}
