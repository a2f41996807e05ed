package mesh_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"io"
	"log/slog"
	"math"
	"math/big"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	oteltrace "go.opentelemetry.io/otel/trace"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"mesh"
	"mesh/admin"
	"mesh/controlplane"
	"mesh/identity/csr"
	"mesh/identity/identitytest"
	"mesh/internal/shop"
	"mesh/internal/testutil"
	"mesh/telemetry"
	"mesh/transport"
	"mesh/xdsclient"
	"mesh/xdsclient/xdstest"
)

// assertSplit checks that got of n calls went to a leg of weight p within
// five binomial standard deviations.
func assertSplit(t *testing.T, got, n int, p float64) {
	t.Helper()
	sigma := math.Sqrt(float64(n) * p * (1 - p))
	want := float64(n) * p
	if math.Abs(float64(got)-want) > 5*sigma {
		t.Errorf("got %d of %d, want %.0f ± %.0f (5σ)", got, n, want, 5*sigma)
	}
}

func TestWeightedSplit(t *testing.T) {
	ctx := testutil.Context(t)
	w := shop.StartWorld(t, ctx, shop.WorldConfig{V1: 90, V2: 10})
	const n = 10_000
	split := shop.Run(ctx, w.Conn, n, 16)
	t.Logf("90/10: %s", split)
	if split.Failed() != 0 {
		t.Fatalf("%d RPCs failed", split.Failed())
	}
	assertSplit(t, split.Count("v1"), n, 0.9)
	assertSplit(t, split.Count("v2"), n, 0.1)
}

func TestWeightZeroGetsNothing(t *testing.T) {
	ctx := testutil.Context(t)
	w := shop.StartWorld(t, ctx, shop.WorldConfig{V1: 0, V2: 100})
	split := shop.Run(ctx, w.Conn, 2_000, 8)
	if split.Failed() != 0 || split.Count("v1") != 0 || split.Count("v2") != 2_000 {
		t.Fatalf("0/100 split: %s, want every call on v2", split)
	}
}

func TestFlipsUnderLoadFailNothing(t *testing.T) {
	ctx := testutil.Context(t)
	w := shop.StartWorld(t, ctx, shop.WorldConfig{V1: 90, V2: 10})

	var calls, failed atomic.Int64
	var firstErr atomic.Value
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				_, err := shop.Charge(ctx, w.Conn)
				calls.Add(1)
				if err != nil {
					failed.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
				}
			}
		})
	}
	for i := range 20 {
		if err := w.ControlPlane.Apply(shop.MeshYAML(0, 100)); err != nil {
			t.Fatal(err)
		}
		if err := shop.WaitFor(ctx, w.Conn, 50, func(r shop.Reply) bool { return r.Version == "v2" }); err != nil {
			t.Fatalf("flip %d to 0/100: %v", i, err)
		}
		if err := w.ControlPlane.Apply(shop.MeshYAML(90, 10)); err != nil {
			t.Fatal(err)
		}
		if err := shop.WaitFor(ctx, w.Conn, 1, func(r shop.Reply) bool { return r.Version == "v1" }); err != nil {
			t.Fatalf("flip %d back to 90/10: %v", i, err)
		}
	}
	close(stop)
	wg.Wait()
	t.Logf("%d calls during 20 flips, %d failed", calls.Load(), failed.Load())
	if failed.Load() != 0 {
		t.Fatalf("%d of %d calls failed during flips; first: %v", failed.Load(), calls.Load(), firstErr.Load())
	}
	if calls.Load() < 100 {
		t.Fatalf("only %d calls ran during the flips; the load did not run", calls.Load())
	}
}

func TestStrictServerRefusesPlaintext(t *testing.T) {
	ctx := testutil.Context(t)
	w := shop.StartWorld(t, ctx, shop.WorldConfig{V1: 100, V2: 0})
	conn, err := grpc.NewClient(w.Payments["v1"].String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	_, err = shop.Charge(ctx, conn)
	if status.Code(err) != codes.Unavailable {
		t.Fatalf("plaintext call to a STRICT server: got %v, want Unavailable", err)
	}
	// The mesh client, with its SVID, is let in, and the server knows who it is.
	reply, err := shop.Charge(ctx, w.Conn)
	if err != nil {
		t.Fatal(err)
	}
	if want := "spiffe://cluster.local/ns/default/sa/checkout"; reply.Caller != want {
		t.Fatalf("server saw caller %q, want %q", reply.Caller, want)
	}
}

func TestServerSpanIsChildOfClientSpan(t *testing.T) {
	ctx := testutil.Context(t)
	w := shop.StartWorld(t, ctx, shop.WorldConfig{V1: 100, V2: 0})
	for _, rec := range append([]*tracetest.SpanRecorder{w.ClientSpans}, w.ServerSpans["v1"]) {
		rec.Reset()
	}
	reply, err := shop.Charge(ctx, w.Conn)
	if err != nil {
		t.Fatal(err)
	}
	client := onlySpan(ctx, t, w.ClientSpans, oteltrace.SpanKindClient)
	server := onlySpan(ctx, t, w.ServerSpans["v1"], oteltrace.SpanKindServer)
	if server.Parent().SpanID() != client.SpanContext().SpanID() || server.SpanContext().TraceID() != client.SpanContext().TraceID() {
		t.Fatalf("server span %s (parent %s) is not a child of client span %s",
			server.SpanContext().SpanID(), server.Parent().SpanID(), client.SpanContext().SpanID())
	}
	if reply.TraceID != client.SpanContext().TraceID().String() {
		t.Fatalf("handler saw trace %s, client span is in %s", reply.TraceID, client.SpanContext().TraceID())
	}
}

// onlySpan waits for the one span of kind for the Payments service; a
// server span ends just after the client has its reply, so it may be late.
func onlySpan(ctx context.Context, t *testing.T, rec *tracetest.SpanRecorder, kind oteltrace.SpanKind) sdktrace.ReadOnlySpan {
	t.Helper()
	for {
		var found []sdktrace.ReadOnlySpan
		for _, s := range rec.Ended() {
			if s.SpanKind() == kind && strings.Contains(s.Name(), shop.ServiceName) {
				found = append(found, s)
			}
		}
		switch {
		case len(found) == 1:
			return found[0]
		case len(found) > 1:
			t.Fatalf("want one %s span for %s, got %d", kind, shop.ServiceName, len(found))
		}
		select {
		case <-ctx.Done():
			t.Fatalf("no %s span for %s: %v", kind, shop.ServiceName, ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

func TestReplacedCertFilesAreUsedByNextHandshakes(t *testing.T) {
	ctx := testutil.Context(t)
	w := shop.StartWorld(t, ctx, shop.WorldConfig{V1: 100, V2: 0, CertRefresh: 5 * time.Millisecond})
	before := servingCertSerial(ctx, t, w.Conn)

	chain, key, err := w.ControlPlane.IssueSVID("default", "payments")
	if err != nil {
		t.Fatal(err)
	}
	rotated, err := x509svid.Parse(chain, key)
	if err != nil {
		t.Fatal(err)
	}
	want := rotated.Certificates[0].SerialNumber
	if want.Cmp(before) == 0 {
		t.Fatal("the new SVID has the old serial number")
	}
	dir := w.Dirs["payments-v1"]
	// The key first, then the chain: the watcher may see a mismatched pair
	// in between, which it must reject while keeping the old SVID.
	if err := identitytest.WriteFileAtomic(filepath.Join(dir, identitytest.KeyFile), key); err != nil {
		t.Fatal(err)
	}
	if err := identitytest.WriteFileAtomic(filepath.Join(dir, identitytest.CertChainFile), chain); err != nil {
		t.Fatal(err)
	}

	// Each new channel makes a new handshake; the server's files are
	// re-read within a few milliseconds, and never restarted.
	for {
		conn, err := w.Checkout.Dial(shop.PaymentsTarget)
		if err != nil {
			t.Fatal(err)
		}
		got := servingCertSerial(ctx, t, conn)
		conn.Close()
		if got.Cmp(want) == 0 {
			break
		}
		if got.Cmp(before) != 0 {
			t.Fatalf("server presented serial %s, neither the old %s nor the new %s", got, before, want)
		}
		select {
		case <-ctx.Done():
			t.Fatal("the server never presented the replaced certificate")
		case <-time.After(5 * time.Millisecond):
		}
	}
	// The old channel's connection, made before the rotation, still works.
	if _, err := shop.Charge(ctx, w.Conn); err != nil {
		t.Fatalf("existing connection after rotation: %v", err)
	}
}

// servingCertSerial makes one call and returns the serial number of the
// certificate the server presented in the handshake.
func servingCertSerial(ctx context.Context, t *testing.T, conn *grpc.ClientConn) *big.Int {
	t.Helper()
	var p peer.Peer
	if err := conn.Invoke(ctx, shop.ChargeMethod, &structpb.Struct{}, &structpb.Struct{}, grpc.Peer(&p)); err != nil {
		t.Fatal(err)
	}
	info, ok := p.AuthInfo.(transport.AuthInfo)
	if !ok || info.State == nil {
		t.Fatalf("call was not over mTLS: auth info %T %+v", p.AuthInfo, p.AuthInfo)
	}
	return info.State.PeerCertificates[0].SerialNumber
}

func TestBadResourceIsNACKedAndLastGoodRouteKeepsServing(t *testing.T) {
	ctx := testutil.Context(t)
	cluster := func(subset string) string { return "outbound|8080|" + subset + "|" + shop.PaymentsHost }
	// Once armed, the control plane sends checkout a route config whose
	// weights sum to zero, in place of the one its YAML says.
	var armed atomic.Bool
	hook := func(_ string, resources map[string][]types.Resource) {
		if !armed.Load() {
			return
		}
		routes := resources[resource.RouteType]
		for i, r := range routes {
			if named, ok := r.(interface{ GetName() string }); ok && named.GetName() == shop.PaymentsTarget {
				routes[i] = xdstest.RouteConfig(shop.PaymentsTarget, shop.PaymentsHost,
					xdsclient.ClusterWeight{Name: cluster("v1"), Weight: 0},
					xdsclient.ClusterWeight{Name: cluster("v2"), Weight: 0})
			}
		}
	}
	w := shop.StartWorld(t, ctx, shop.WorldConfig{V1: 0, V2: 100, SnapshotHook: hook})

	events := make(chan xdsclient.Event[*xdsclient.RouteConfig], 64)
	cancel := w.Checkout.XDSClient().WatchRouteConfig(shop.PaymentsTarget, func(ev xdsclient.Event[*xdsclient.RouteConfig]) {
		select {
		case events <- ev:
		default:
		}
	})
	defer cancel()

	armed.Store(true)
	// Valid YAML, so the control plane pushes; what it pushes is the bad route.
	if err := w.ControlPlane.Apply(shop.MeshYAML(100, 0)); err != nil {
		t.Fatal(err)
	}
	for nacked := false; !nacked; {
		select {
		case ev := <-events:
			if ev.Err == nil {
				continue
			}
			msg := ev.Err.Error()
			if !strings.Contains(msg, shop.PaymentsTarget) || !strings.Contains(msg, "weighted_clusters") {
				t.Fatalf("NACK error %q does not name the resource and the field", msg)
			}
			t.Logf("rejected: %s", msg)
			nacked = true
		case <-ctx.Done():
			t.Fatal("the bad route config was never rejected")
		}
	}
	// The last good route (0/100) keeps serving: every call still goes to v2.
	split := shop.Run(ctx, w.Conn, 1_000, 8)
	if split.Failed() != 0 || split.Count("v2") != 1_000 {
		t.Fatalf("after the NACK: %s, want all 1000 on v2", split)
	}
}

// A workload with no certificate files at all: it makes its own key, proves
// who it is to the control plane's CA with its token, and calls payments
// over mTLS with the certificate it got back.
func TestAgentlessWorkloadCallsOverMTLS(t *testing.T) {
	ctx := testutil.Context(t)
	w := shop.StartWorld(t, ctx, shop.WorldConfig{V1: 100, V2: 0})
	cp := w.ControlPlane
	workload := controlplane.Workload{Name: "checkout-agentless", Namespace: "default", ServiceAccount: "checkout", Service: "checkout", Port: 8080}
	token, err := cp.WorkloadToken(workload)
	if err != nil {
		t.Fatal(err)
	}
	src, err := csr.NewSource(ctx, csr.Config{
		Addr:           cp.Addr(),
		Token:          func(context.Context) (string, error) { return token, nil },
		TrustDomain:    "cluster.local",
		Namespace:      "default",
		ServiceAccount: "checkout",
		TTL:            time.Hour,
		RootPEM:        cp.RootPEM(),
		TLS:            &tls.Config{RootCAs: testutil.RootPool(t, cp.RootPEM()), MinVersion: tls.VersionTLS12},
	})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	// The bootstrap names certificate files that do not exist; the option
	// supplies the "default" provider instead. Its directory holds only
	// what the xDS stream needs: the CA's root and the token.
	bootstrap, err := cp.BootstrapJSON(workload, xdsCredentialsDir(t, cp, workload))
	if err != nil {
		t.Fatal(err)
	}
	m, err := mesh.New(ctx, mesh.WithBootstrapJSON(bootstrap), mesh.WithCertificateProvider("default", src), mesh.WithLogger(shop.TestLogger(t)))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	conn, err := m.Dial(shop.PaymentsTarget)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	reply, err := shop.Charge(ctx, conn)
	if err != nil {
		t.Fatal(err)
	}
	if want := "spiffe://cluster.local/ns/default/sa/checkout"; reply.Caller != want {
		t.Fatalf("payments saw caller %q, want %q", reply.Caller, want)
	}
}

// With the control plane's SDS on, TLS settings name secrets instead of the
// bootstrap's file provider: the server presents the SVID the control plane
// pushed over ADS, not the one in its files, and mTLS works end to end.
func TestSDSSecretsSecureCalls(t *testing.T) {
	ctx := testutil.Context(t)
	w := shop.StartWorldWith(t, ctx, shop.WorldConfig{V1: 100, V2: 0},
		shop.WorldOptions{ControlPlane: []controlplane.Option{controlplane.WithSDS(true)}})
	reply, err := shop.Charge(ctx, w.Conn)
	if err != nil {
		t.Fatal(err)
	}
	if want := "spiffe://cluster.local/ns/default/sa/checkout"; reply.Caller != want {
		t.Fatalf("payments saw caller %q, want %q", reply.Caller, want)
	}
	chain, err := os.ReadFile(filepath.Join(w.Dirs["payments-v1"], identitytest.CertChainFile))
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(chain)
	fileCert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if served := servingCertSerial(ctx, t, w.Conn); served.Cmp(fileCert.SerialNumber) == 0 {
		t.Fatal("the server presented its file certificate; SDS was not used")
	}
}

func TestAdminPagesShowTheXDSConfigInForce(t *testing.T) {
	ctx := testutil.Context(t)
	metrics := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "# test registry\n") })
	w := shop.StartWorld(t, ctx, shop.WorldConfig{V1: 100, V2: 0})
	srv, err := admin.Serve(w.Checkout, "127.0.0.1:0", metrics)
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	base := "http://" + srv.Addr()
	fetch := func(path string) string {
		t.Helper()
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("GET %s: %s: %s", path, resp.Status, body)
		}
		return string(body)
	}
	if got := fetch("/metrics"); got != "# test registry\n" {
		t.Fatalf("/metrics = %q", got)
	}
	fetch("/healthz")
	if got := fetch("/debug/graph.json"); !strings.Contains(got, "nodes") {
		t.Fatalf("/debug/graph.json = %s", got)
	}
	var clusters struct {
		Clusters []struct {
			Name      string
			Endpoints []struct{ Address, Health string }
		}
	}
	body := fetch("/debug/clusters")
	if err := json.Unmarshal([]byte(body), &clusters); err != nil {
		t.Fatal(err)
	}
	ready := false
	for _, c := range clusters.Clusters {
		for _, e := range c.Endpoints {
			ready = ready || (c.Name == "outbound|8080|v1|"+shop.PaymentsHost && e.Address == w.Payments["v1"].String() && e.Health == "READY")
		}
	}
	if !ready {
		t.Fatalf("/debug/clusters does not show payments v1's endpoint READY: %s", body)
	}
	var config struct {
		Resources []struct{ Type, Name, Version, Status string }
	}
	if err := json.Unmarshal([]byte(fetch("/debug/config")), &config); err != nil {
		t.Fatal(err)
	}
	for _, r := range config.Resources {
		if r.Name == shop.PaymentsTarget && r.Type == "listener" {
			if r.Status != "ACK" || r.Version == "" {
				t.Fatalf("listener %s: status %q version %q, want an ACKed version", r.Name, r.Status, r.Version)
			}
			return
		}
	}
	t.Fatalf("/debug/config has no listener %s: %+v", shop.PaymentsTarget, config.Resources)
}

func TestAccessLogRecordsEachCall(t *testing.T) {
	ctx := testutil.Context(t)
	var logs testutil.Buffer
	accessLog := slog.New(slog.NewJSONHandler(&logs, nil))
	w := shop.StartWorldWith(t, ctx, shop.WorldConfig{V1: 100, V2: 0}, shop.WorldOptions{
		Mesh: func(wl controlplane.Workload, _ string) []mesh.Option {
			if wl.Name != "checkout" {
				return nil
			}
			return []mesh.Option{mesh.WithAccessLog(accessLog, telemetry.AccessLogConfig{})}
		},
	})
	if _, err := shop.Charge(ctx, w.Conn); err != nil {
		t.Fatal(err)
	}
	payments := w.Payments["v1"].String()
	for _, want := range []string{`"path":"` + shop.ChargeMethod + `"`, `"response_code":200`, `"grpc_status":"0"`,
		`"upstream_cluster":"outbound|8080|v1|` + shop.PaymentsHost + `"`, `"upstream_host":"` + payments + `"`, `"peer_principal":"spiffe://cluster.local/ns/default/sa/payments"`} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("access log lacks %s:\n%s", want, logs.String())
		}
	}
}
