package controlplane

import (
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"

	"mesh/internal/testutil"
)

func TestConfigFileChangePushes(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "mesh.yaml")
	write := func(content string) {
		t.Helper()
		if err := writeFileAtomic(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write(subsetsYAML + "---\n" + vsYAML(90, 10))
	rec := testutil.NewLogs(slog.LevelDebug)
	s := newTestServer(t,
		WithConfigFile(path), WithFileCheckInterval(5*time.Millisecond), WithLogger(slog.New(rec)),
		WithWorkloads(
			Workload{Name: "payments-v1", Service: "payments", Port: 8080, Labels: map[string]string{"version": "v1"}},
			Workload{Name: "payments-v2", Service: "payments", Port: 8080, Labels: map[string]string{"version": "v2"}},
		))
	ctx := testutil.Context(t)
	client := dialADS(t, s, clientNode())
	client.subscribe(resource.RouteType, paymentsListener)
	v1, v2 := "outbound|8080|v1|"+paymentsHost, "outbound|8080|v2|"+paymentsHost
	client.await(ctx, resource.RouteType, func(r *discovery.DiscoveryResponse) bool {
		w := weights(t, r)
		return w[v1] == 90 && w[v2] == 10
	})

	write(subsetsYAML + "---\n" + vsYAML(40, 60))
	client.await(ctx, resource.RouteType, func(r *discovery.DiscoveryResponse) bool {
		w := weights(t, r)
		return w[v1] == 40 && w[v2] == 60
	})

	// An invalid file is logged and the last good config stays.
	write(subsetsYAML + "---\n" + vsYAML(-5, 60))
	msg := rec.Await(ctx, t, "config file rejected")
	if want := "spec.http[1].route[0].weight"; !strings.Contains(msg, want) {
		t.Fatalf("log %q does not name %s", msg, want)
	}
	if got := s.configSnapshot(); !strings.Contains(got, "weight:40") {
		t.Fatalf("config after invalid file: %s", got)
	}
	write(subsetsYAML + "---\n" + vsYAML(70, 30))
	client.await(ctx, resource.RouteType, func(r *discovery.DiscoveryResponse) bool {
		w := weights(t, r)
		return w[v1] == 70 && w[v2] == 30
	})
}

func TestConfigFileInvalidAtStartFailsNew(t *testing.T) {
	path := filepath.Join(t.TempDir(), "mesh.yaml")
	if err := os.WriteFile(path, []byte("kind: Nope\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := New(testutil.Context(t), WithConfigFile(path)); err == nil || !strings.Contains(err.Error(), `kind "Nope"`) {
		t.Fatalf("New = %v", err)
	}
	if _, err := New(testutil.Context(t), WithConfigFile(filepath.Join(t.TempDir(), "missing.yaml"))); err == nil {
		t.Fatal("New accepted a missing config file")
	}
}

func TestConfigFileRetriedWhenRegistryChanges(t *testing.T) {
	path := filepath.Join(t.TempDir(), "mesh.yaml")
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	rec := testutil.NewLogs(slog.LevelDebug)
	s := newTestServer(t, WithConfigFile(path), WithFileCheckInterval(5*time.Millisecond), WithLogger(slog.New(rec)))
	ctx := testutil.Context(t)
	// Routes to a service nothing has declared yet: rejected, the last
	// good (empty) config stays.
	vs := "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: checkout}\nspec:\n  hosts: [checkout]\n  http:\n  - route:\n    - destination: {host: payments}\n"
	if err := writeFileAtomic(path, []byte(vs), 0o644); err != nil {
		t.Fatal(err)
	}
	rec.Await(ctx, t, "config file rejected")
	if got := s.configSnapshot(); got != "" {
		t.Fatalf("rejected file was applied: %s", got)
	}
	declarePayments(t, s) // payments becomes known; the file is retried
	rec.Await(ctx, t, "config file applied")
	if got := s.configSnapshot(); !strings.Contains(got, "VirtualService default/checkout") {
		t.Fatalf("config = %q", got)
	}
}
