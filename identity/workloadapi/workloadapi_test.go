package workloadapi_test

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"testing"
	"time"

	workloadpb "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"mesh/identity/identitytest"
	"mesh/identity/internal/source"
	"mesh/identity/internal/sourcetest"
	"mesh/identity/workloadapi"
	"mesh/internal/testutil"
)

// startWorkloadAPI serves a Workload API on a fresh socket until the test
// ends.
func startWorkloadAPI(t *testing.T) *identitytest.WorkloadAPI {
	t.Helper()
	return serveWorkloadAPIAt(t, socketPath(t))
}

func serveWorkloadAPIAt(t *testing.T, path string) *identitytest.WorkloadAPI {
	t.Helper()
	api, err := identitytest.NewWorkloadAPI(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = api.Close() })
	return api
}

// socketPath is short: unix socket paths are limited to about 100 bytes.
func socketPath(t *testing.T) string {
	t.Helper()
	return filepath.Join(t.TempDir(), "api.sock")
}

func svidResponse(t *testing.T, ca *identitytest.CA, svid *x509svid.SVID, federated ...*identitytest.CA) *workloadpb.X509SVIDResponse {
	t.Helper()
	certs, key, err := svid.MarshalRaw()
	if err != nil {
		t.Fatal(err)
	}
	resp := &workloadpb.X509SVIDResponse{
		Svids: []*workloadpb.X509SVID{{
			SpiffeId:    svid.ID.String(),
			X509Svid:    certs,
			X509SvidKey: key,
			Bundle:      ca.Root().Raw,
		}},
		FederatedBundles: map[string][]byte{},
	}
	for _, f := range federated {
		resp.FederatedBundles[f.TrustDomain().IDString()] = f.Root().Raw
	}
	return resp
}

func newWorkloadAPISource(t *testing.T, addr string, opts ...workloadapi.Option) *workloadapi.Source {
	t.Helper()
	opts = append([]workloadapi.Option{workloadapi.WithLogger(slog.New(slog.DiscardHandler))}, opts...)
	src, err := workloadapi.NewSource(testutil.Context(t), addr, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = src.Close() })
	return src
}

func TestWorkloadAPISourceFetchesAndRotates(t *testing.T) {
	ctx := testutil.Context(t)
	ca := sourcetest.NewCA(t, sourcetest.TD)
	partner := sourcetest.NewCA(t, "partner.org")
	api := startWorkloadAPI(t)
	first := sourcetest.Issue(t, ca, sourcetest.ClientID)
	api.PushResponse(svidResponse(t, ca, first, partner))

	src := newWorkloadAPISource(t, api.Addr())
	got, err := src.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	if got.ID.String() != sourcetest.ClientID || got.Certificates[0].SerialNumber.Cmp(first.Certificates[0].SerialNumber) != 0 {
		t.Fatalf("SVID = %s serial %v, want %s serial %v", got.ID, got.Certificates[0].SerialNumber, sourcetest.ClientID, first.Certificates[0].SerialNumber)
	}
	own, err := src.GetX509BundleForTrustDomain(ca.TrustDomain())
	if err != nil || !own.HasX509Authority(ca.Root()) {
		t.Fatalf("own bundle = %v, %v; want the CA root", own, err)
	}
	fed, err := src.GetX509BundleForTrustDomain(partner.TrustDomain())
	if err != nil || !fed.HasX509Authority(partner.Root()) {
		t.Fatalf("federated bundle = %v, %v; want partner's root", fed, err)
	}
	if _, err := src.GetX509BundleForTrustDomain(spiffeid.RequireTrustDomainFromString("other.org")); err == nil {
		t.Error("got a bundle for a trust domain the agent never sent")
	}

	for range 2 { // twice: the Updated channel is replaced after each update
		updated := src.Updated()
		next := sourcetest.Issue(t, ca, sourcetest.ClientID)
		api.PushResponse(svidResponse(t, ca, next))
		sourcetest.WaitClosed(ctx, t, updated, "rotation")
		if got, want := sourcetest.SerialOf(t, src), next.Certificates[0].SerialNumber; got.Cmp(want) != 0 {
			t.Fatalf("after rotation serial = %v, want %v", got, want)
		}
	}
	// The last push carried no federated bundle: it is gone.
	if _, err := src.GetX509BundleForTrustDomain(partner.TrustDomain()); err == nil {
		t.Error("federated bundle kept after the agent dropped it")
	}
}

func TestWorkloadAPISourceKeepsLastGoodOnBadUpdate(t *testing.T) {
	ctx := testutil.Context(t)
	ca := sourcetest.NewCA(t, sourcetest.TD)
	stranger := sourcetest.NewCA(t, sourcetest.TD)
	api := startWorkloadAPI(t)
	good := sourcetest.Issue(t, ca, sourcetest.ClientID)
	api.PushResponse(svidResponse(t, ca, good))
	warned := testutil.NewLogs(slog.LevelWarn)
	src := newWorkloadAPISource(t, api.Addr(), workloadapi.WithLogger(slog.New(warned)))
	updated := src.Updated()

	bad := []struct {
		name string
		resp func() *workloadpb.X509SVIDResponse
		want string
	}{
		{"no svids", func() *workloadpb.X509SVIDResponse { return &workloadpb.X509SVIDResponse{} }, "response has no SVIDs"},
		{"garbage key", func() *workloadpb.X509SVIDResponse {
			r := svidResponse(t, ca, sourcetest.Issue(t, ca, sourcetest.ClientID))
			r.Svids[0].X509SvidKey = []byte("garbage")
			return r
		}, `svid "` + sourcetest.ClientID + `": x509_svid/x509_svid_key`},
		{"id mismatch", func() *workloadpb.X509SVIDResponse {
			r := svidResponse(t, ca, sourcetest.Issue(t, ca, sourcetest.ClientID))
			r.Svids[0].SpiffeId = "spiffe://example.org/ns/default/sa/other"
			return r
		}, "spiffe_id does not match"},
		{"foreign signer", func() *workloadpb.X509SVIDResponse {
			return svidResponse(t, ca, sourcetest.Issue(t, stranger, sourcetest.ClientID))
		}, "does not verify against its bundle"},
		{"bad federated domain", func() *workloadpb.X509SVIDResponse {
			r := svidResponse(t, ca, sourcetest.Issue(t, ca, sourcetest.ClientID))
			r.FederatedBundles["Not A Domain"] = ca.Root().Raw
			return r
		}, `federated_bundles["Not A Domain"]`},
	}
	for _, tt := range bad {
		api.PushResponse(tt.resp())
		select {
		case r := <-warned.Records():
			if msg := sourcetest.RecordError(r); !strings.Contains(msg, tt.want) {
				t.Fatalf("%s: warning error = %q, want it to contain %q", tt.name, msg, tt.want)
			}
		case <-ctx.Done():
			t.Fatalf("%s: timed out waiting for the bad update to be reported", tt.name)
		}
	}
	select {
	case <-updated:
		t.Fatal("Updated fired for a bad update")
	default:
	}
	if got := sourcetest.SerialOf(t, src); got.Cmp(good.Certificates[0].SerialNumber) != 0 {
		t.Fatalf("serial after bad updates = %v, want the last good %v", got, good.Certificates[0].SerialNumber)
	}

	next := sourcetest.Issue(t, ca, sourcetest.ClientID)
	api.PushResponse(svidResponse(t, ca, next))
	sourcetest.WaitClosed(ctx, t, updated, "update after recovery")
	if got := sourcetest.SerialOf(t, src); got.Cmp(next.Certificates[0].SerialNumber) != 0 {
		t.Fatalf("serial after recovery = %v, want %v", got, next.Certificates[0].SerialNumber)
	}
}

func TestWorkloadAPISourcePicksSVIDByHint(t *testing.T) {
	ca := sourcetest.NewCA(t, sourcetest.TD)
	api := startWorkloadAPI(t)
	resp := svidResponse(t, ca, sourcetest.Issue(t, ca, sourcetest.ClientID))
	second := svidResponse(t, ca, sourcetest.Issue(t, ca, "spiffe://example.org/ns/default/sa/internal")).Svids[0]
	second.Hint = "internal"
	resp.Svids = append(resp.Svids, second)
	api.PushResponse(resp)

	src := newWorkloadAPISource(t, api.Addr(), workloadapi.WithSVIDHint("internal"))
	got, err := src.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	if got.ID.String() != "spiffe://example.org/ns/default/sa/internal" {
		t.Fatalf("SVID = %s, want the one hinted internal", got.ID)
	}
}

func TestWorkloadAPISourceReconnects(t *testing.T) {
	ctx := testutil.Context(t)
	ca := sourcetest.NewCA(t, sourcetest.TD)
	path := socketPath(t)
	api := serveWorkloadAPIAt(t, path)
	api.PushResponse(svidResponse(t, ca, sourcetest.Issue(t, ca, sourcetest.ClientID)))
	clk := source.NewFakeClock(time.Now())
	src := newWorkloadAPISource(t, api.Addr(), workloadapi.WithClock(clk), workloadapi.WithRetryBackoff(time.Second, 4*time.Second))
	updated := src.Updated()

	// The agent restarts: the stream breaks and a new server takes the socket.
	_ = api.Close()
	var retry *source.FakeTimer
	select {
	case retry = <-clk.Timers():
	case <-ctx.Done():
		t.Fatal("timed out waiting for a retry to be scheduled")
	}
	if retry.D != time.Second {
		t.Errorf("first retry delay = %v, want the minimum 1s", retry.D)
	}
	restarted := serveWorkloadAPIAt(t, path)
	next := sourcetest.Issue(t, ca, sourcetest.ClientID)
	if err := restarted.Push(next, ca.Bundle()); err != nil {
		t.Fatal(err)
	}
	retry.Fire()
	sourcetest.WaitClosed(ctx, t, updated, "update from the restarted agent")
	if got := sourcetest.SerialOf(t, src); got.Cmp(next.Certificates[0].SerialNumber) != 0 {
		t.Fatalf("serial = %v, want %v from the restarted agent", got, next.Certificates[0].SerialNumber)
	}
}

func TestWorkloadAPISourceBacksOff(t *testing.T) {
	ctx := testutil.Context(t)
	ca := sourcetest.NewCA(t, sourcetest.TD)
	api := startWorkloadAPI(t)
	api.PushResponse(svidResponse(t, ca, sourcetest.Issue(t, ca, sourcetest.ClientID)))
	clk := source.NewFakeClock(time.Now())
	src := newWorkloadAPISource(t, api.Addr(), workloadapi.WithClock(clk), workloadapi.WithRetryBackoff(time.Second, 4*time.Second))

	// The agent now refuses every stream; break the current one.
	api.Refuse(status.Error(codes.PermissionDenied, "no identity issued"))
	var delays []time.Duration
	for range 4 {
		select {
		case timer := <-clk.Timers():
			delays = append(delays, timer.D)
			timer.Fire()
		case <-ctx.Done():
			t.Fatalf("timed out waiting for retry %d; delays so far %v", len(delays)+1, delays)
		}
	}
	want := []time.Duration{time.Second, 2 * time.Second, 4 * time.Second, 4 * time.Second}
	for i := range want {
		if delays[i] != want[i] {
			t.Fatalf("retry delays = %v, want %v", delays, want)
		}
	}
	// The SVID received before the refusals stays in force.
	if _, err := src.GetX509SVID(); err != nil {
		t.Fatalf("GetX509SVID during outage: %v", err)
	}
}

func TestNewWorkloadAPISourceErrors(t *testing.T) {
	for _, tt := range []struct {
		addr, want string
	}{
		{"http://127.0.0.1:1", `scheme "http" is not unix or tcp`},
		{"unix:relative/path", "must be absolute"},
		{"unix://host/path", "unix address has a host"},
		{"unix:///p?x=1", "must not have a query"},
		{"tcp://localhost:80", "needs an IP literal"},
		{"tcp://127.0.0.1", "needs an IP literal"},
		{"tcp://127.0.0.1:80/path", "tcp://ip:port and nothing else"},
	} {
		_, err := workloadapi.NewSource(testutil.Context(t), tt.addr)
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("NewSource(%q) err = %v, want %q", tt.addr, err, tt.want)
		}
	}

	t.Run("no address", func(t *testing.T) {
		t.Setenv(workloadapi.EndpointSocketEnv, "")
		_, err := workloadapi.NewSource(testutil.Context(t), "")
		if err == nil || !strings.Contains(err.Error(), "SPIFFE_ENDPOINT_SOCKET is unset") {
			t.Fatalf("err = %v, want SPIFFE_ENDPOINT_SOCKET is unset", err)
		}
	})

	t.Run("address from environment", func(t *testing.T) {
		ca := sourcetest.NewCA(t, sourcetest.TD)
		api := startWorkloadAPI(t)
		api.PushResponse(svidResponse(t, ca, sourcetest.Issue(t, ca, sourcetest.ClientID)))
		t.Setenv(workloadapi.EndpointSocketEnv, api.Addr())
		src := newWorkloadAPISource(t, "")
		if got := sourcetest.SerialOf(t, src); got == nil {
			t.Fatal("no SVID")
		}
	})

	t.Run("refused", func(t *testing.T) {
		api := startWorkloadAPI(t)
		api.Refuse(status.Error(codes.PermissionDenied, "no identity issued"))
		path := strings.TrimPrefix(api.Addr(), "unix://")
		ctx, cancel := context.WithCancel(testutil.Context(t))
		clk := source.NewFakeClock(time.Now())
		errc := make(chan error, 1)
		go func() {
			_, err := workloadapi.NewSource(ctx, api.Addr(), workloadapi.WithClock(clk),
				workloadapi.WithLogger(slog.New(slog.DiscardHandler)))
			errc <- err
		}()
		// Once the first attempt failed and a retry is scheduled, give up.
		select {
		case <-clk.Timers():
		case <-ctx.Done():
			t.Fatal("timed out waiting for the first attempt to fail")
		}
		cancel()
		err := <-errc
		if !errors.Is(err, context.Canceled) || status.Code(err) != codes.PermissionDenied ||
			!strings.Contains(err.Error(), path) {
			t.Fatalf("err = %v, want context.Canceled naming %s and PermissionDenied", err, path)
		}
	})

	t.Run("canceled context", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		if _, err := workloadapi.NewSource(ctx, "unix:///nonexistent.sock"); !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v, want context.Canceled", err)
		}
	})
}

func TestWorkloadAPISourceClose(t *testing.T) {
	ca := sourcetest.NewCA(t, sourcetest.TD)
	api := startWorkloadAPI(t)
	api.PushResponse(svidResponse(t, ca, sourcetest.Issue(t, ca, sourcetest.ClientID)))
	src, err := workloadapi.NewSource(testutil.Context(t), api.Addr(), workloadapi.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = src.Close() })
	updated := src.Updated()
	if err := src.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-workloadapi.Done(src):
	default:
		t.Fatal("Close returned before the stream goroutine exited")
	}
	sourcetest.CheckClosed(t, src, ca.TrustDomain(), updated)
}

func TestWorkloadAPISourceOverTCP(t *testing.T) {
	ca := sourcetest.NewCA(t, sourcetest.TD)
	api := startWorkloadAPI(t)
	svid := sourcetest.Issue(t, ca, sourcetest.ClientID)
	if err := api.Push(svid, ca.Bundle()); err != nil {
		t.Fatal(err)
	}
	// The same agent, reached over loopback TCP as some deployments do.
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	workloadpb.RegisterSpiffeWorkloadAPIServer(srv, api)
	testutil.Serve(t, srv, lis)
	src := newWorkloadAPISource(t, "tcp://"+lis.Addr().String())
	if got := sourcetest.SerialOf(t, src); got.Cmp(svid.Certificates[0].SerialNumber) != 0 {
		t.Fatalf("serial = %v, want %v", got, svid.Certificates[0].SerialNumber)
	}
}
