package mesh_test

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"mesh"
	"mesh/controlplane"
	"mesh/identity"
	"mesh/identity/identitytest"
	"mesh/internal/shop"
	"mesh/internal/testutil"
)

func TestSVIDRotationUnderLoadFailsNothing(t *testing.T) {
	ctx := testutil.Context(t)
	// Workloads re-read their SVID files every 20ms; rotations are paced
	// by observing their effect, not by sleeping.
	w := shop.StartWorld(t, ctx, shop.WorldConfig{V1: 100, V2: 0, CertRefresh: 20 * time.Millisecond})
	l := shop.StartLoad(ctx, t, 4, func(ctx context.Context) error { _, err := shop.Charge(ctx, w.Conn); return err })
	l.WaitCalls(ctx, t, 100)

	seen := []*big.Int{servingCertSerial(ctx, t, w.Conn)}
	const rotations = 5
	for i := range rotations {
		var want *big.Int
		for _, name := range []string{"payments-v1", "payments-v2"} {
			chain, key, err := w.ControlPlane.IssueSVID("default", "payments")
			if err != nil {
				t.Fatal(err)
			}
			if name == "payments-v1" {
				svid, err := x509svid.Parse(chain, key)
				if err != nil {
					t.Fatal(err)
				}
				want = svid.Certificates[0].SerialNumber
			}
			// Each file is replaced atomically; the key goes first, so
			// between the two writes the watcher sees a new key with the
			// old chain, a mismatch it must refuse while keeping the old
			// pair.
			dir := w.Dirs[name]
			if err := identitytest.WriteFileAtomic(filepath.Join(dir, identitytest.KeyFile), key); err != nil {
				t.Fatal(err)
			}
			if err := identitytest.WriteFileAtomic(filepath.Join(dir, identitytest.CertChainFile), chain); err != nil {
				t.Fatal(err)
			}
		}
		// A new channel each time: a new handshake, which must present
		// the new certificate once the watcher has read it.
		for {
			conn, err := w.Checkout.Dial(shop.PaymentsTarget)
			if err != nil {
				t.Fatal(err)
			}
			got := servingCertSerial(ctx, t, conn)
			conn.Close()
			if got.Cmp(want) == 0 {
				seen = append(seen, got)
				break
			}
			if got.Cmp(seen[len(seen)-1]) != 0 {
				t.Fatalf("rotation %d: server presented serial %s, neither the previous %s nor the new %s", i, got, seen[len(seen)-1], want)
			}
			select {
			case <-ctx.Done():
				t.Fatalf("rotation %d: the server never presented the new certificate", i)
			case <-time.After(5 * time.Millisecond):
			}
		}
		l.WaitCalls(ctx, t, 50) // load runs across every rotation
	}
	l.Check(t, "5 SVID rotations", 1)
	changes := 0
	for i := 1; i < len(seen); i++ {
		if seen[i].Cmp(seen[i-1]) != 0 {
			changes++
		}
	}
	if changes < rotations-1 {
		t.Fatalf("server's serial changed %d times, want at least %d", changes, rotations-1)
	}
}

// meshWithIdentity joins w's mesh as a checkout-like workload whose SVID
// and trust bundle are given, not issued by the control plane.
func meshWithIdentity(ctx context.Context, t *testing.T, cp *controlplane.Server, name string, svid *x509svid.SVID, bundle *x509bundle.Bundle) *mesh.Mesh {
	t.Helper()
	wl := controlplane.Workload{Name: name, Namespace: "default", ServiceAccount: "checkout"}
	bootstrap, err := cp.BootstrapJSON(wl, xdsCredentialsDir(t, cp, wl))
	if err != nil {
		t.Fatal(err)
	}
	m, err := mesh.New(ctx, mesh.WithBootstrapJSON(bootstrap), mesh.WithLogger(shop.TestLogger(t)),
		mesh.WithCertificateProvider("default", identity.NewStaticSource(svid, bundle)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// chargeOnce calls payments once over a new channel from m.
func chargeOnce(ctx context.Context, t *testing.T, m *mesh.Mesh) (shop.Reply, error) {
	t.Helper()
	conn, err := m.Dial(shop.PaymentsTarget)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	return shop.Charge(ctx, conn)
}

func TestServerRefusesBadClientCertificates(t *testing.T) {
	ctx := testutil.Context(t)
	ca, signWithCA := testCA(t)
	// payments' logs, where a refused handshake says why.
	serverLog := &testutil.Buffer{}
	w := shop.StartWorldWith(t, ctx, shop.WorldConfig{V1: 100, V2: 0}, shop.WorldOptions{
		ControlPlane: []controlplane.Option{signWithCA},
		Mesh: func(wl controlplane.Workload, _ string) []mesh.Option {
			if wl.Service != "payments" {
				return nil
			}
			return []mesh.Option{mesh.WithLogger(slog.New(slog.NewTextHandler(serverLog, &slog.HandlerOptions{Level: slog.LevelWarn})))}
		},
	})
	checkoutID := spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/checkout")
	now := time.Now()

	// Control: a valid certificate from the same CA, handed over the same
	// way, is let in; only the certificate differs in the cases below.
	valid, err := ca.IssueBetween(checkoutID.String(), now.Add(-time.Minute), now.Add(time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	reply, err := chargeOnce(ctx, t, meshWithIdentity(ctx, t, w.ControlPlane, "checkout-valid", valid, ca.Bundle()))
	if err != nil || reply.Caller != checkoutID.String() {
		t.Fatalf("valid certificate: reply %+v, error %v; want payments to see %s", reply, err, checkoutID)
	}

	evilCA, err := identitytest.NewCA("evil.example")
	if err != nil {
		t.Fatal(err)
	}
	foreign, err := evilCA.Issue("spiffe://evil.example/ns/default/sa/checkout", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	expired, err := ca.IssueBetween(checkoutID.String(), now.Add(-2*time.Hour), now.Add(-time.Hour))
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name      string
		svid      *x509svid.SVID
		serverLog string // why the server refused, as it logs it
	}{
		{"expired", expired, "certificate has expired"},
		{"foreign-trust-domain", foreign, `no bundle for trust domain \"evil.example\"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// The client trusts the real root, so it accepts the server:
			// the refusal is the server's.
			m := meshWithIdentity(ctx, t, w.ControlPlane, "checkout-"+tc.name, tc.svid, ca.Bundle())
			_, err := chargeOnce(ctx, t, m)
			if status.Code(err) != codes.Unavailable {
				t.Fatalf("call with a %s certificate: got %v, want Unavailable", tc.name, err)
			}
			t.Logf("refused: %v", err)
			// The client sees a TLS alert or, racing with it, a closed
			// connection; the server's log is where the reason is. It may
			// be written just after the client's call fails.
			for !strings.Contains(serverLog.String(), tc.serverLog) {
				select {
				case <-ctx.Done():
					t.Fatalf("payments never logged %q; its log:\n%s", tc.serverLog, serverLog.String())
				case <-time.After(5 * time.Millisecond):
				}
			}
		})
	}
}

// A long-lived connection is re-made, with a new handshake and whatever
// certificate is current then, before its certificates can expire: the
// server bounds connection age with a graceful GOAWAY, and no call fails.
func TestLongLivedConnectionsAreRemadeWithoutFailing(t *testing.T) {
	ctx := testutil.Context(t)
	w := shop.StartWorldWith(t, ctx, shop.WorldConfig{V1: 100, V2: 0}, shop.WorldOptions{
		Mesh: func(wl controlplane.Workload, _ string) []mesh.Option {
			if wl.Service != "payments" {
				return nil
			}
			return []mesh.Option{mesh.WithMaxConnectionAge(200 * time.Millisecond)}
		},
	})
	// Each new connection has a new client port; three of them in a row of
	// calls means the channel moved to a new connection at least twice.
	ports := map[string]bool{}
	for calls := 0; len(ports) < 3; calls++ {
		var p peer.Peer
		if err := w.Conn.Invoke(ctx, shop.ChargeMethod, &structpb.Struct{}, &structpb.Struct{}, grpc.Peer(&p)); err != nil {
			t.Fatalf("call %d failed while connections were re-made: %v", calls, err)
		}
		ports[p.LocalAddr.String()] = true
	}
}

// The same for net/http: the server closes an aged connection after a
// response (GOAWAY on HTTP/2), the client moves to a new one, and no
// request fails.
func TestLongLivedHTTPConnectionsAreRemadeWithoutFailing(t *testing.T) {
	ctx := testutil.Context(t)
	w := shop.StartWorld(t, ctx, shop.WorldConfig{V1: 100, V2: 0})
	if err := w.ControlPlane.Apply(shop.WebYAML(100, 0)); err != nil {
		t.Fatal(err)
	}
	shop.StartWeb(t, ctx, w.ControlPlane, "v1", mesh.WithMaxConnectionAge(200*time.Millisecond))
	client := w.Checkout.HTTPClient()
	remotes := map[string]bool{}
	for requests := 0; len(remotes) < 3; requests++ {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+shop.WebHost+":8080/peer", nil)
		resp, err := client.Do(req)
		var body []byte
		if err == nil {
			body, _ = io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				err = fmt.Errorf("%s: %s", resp.Status, body)
			}
		}
		switch {
		case err == nil:
		case ctx.Err() != nil:
			t.Fatalf("only %d connections after %d requests: %v", len(remotes), requests, err)
		case len(remotes) > 0:
			t.Fatalf("request %d failed while connections were re-made: %v", requests, err)
		default:
			continue // the route and the endpoint are on their way
		}
		remotes[string(body)] = true
	}
}

// testCA is a CA whose key the test holds, and the option that makes a
// control plane sign with it.
func testCA(t *testing.T) (*identitytest.CA, controlplane.Option) {
	t.Helper()
	ca, err := identitytest.NewCA("cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	key, err := ca.KeyPEM()
	if err != nil {
		t.Fatal(err)
	}
	return ca, controlplane.WithCA(ca.RootPEM(), key)
}
