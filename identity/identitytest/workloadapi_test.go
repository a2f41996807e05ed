package identitytest_test

import (
	"context"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"mesh/identity/identitytest"
	"mesh/identity/workloadapi"
	"mesh/internal/testutil"
)

func TestWorkloadAPIServesPushedSVIDs(t *testing.T) {
	ctx := testutil.Context(t)
	ca, err := identitytest.NewCA("example.org")
	if err != nil {
		t.Fatal(err)
	}
	partner, err := identitytest.NewCA("partner.org")
	if err != nil {
		t.Fatal(err)
	}
	api, err := identitytest.NewWorkloadAPI(filepath.Join(t.TempDir(), "a.sock"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = api.Close() })
	if !strings.HasPrefix(api.Addr(), "unix:///") {
		t.Fatalf("Addr = %q, want unix:///...", api.Addr())
	}
	if err := api.Push(nil, ca.Bundle()); err == nil {
		t.Error("Push accepted a nil SVID")
	}
	first, err := ca.Issue("spiffe://example.org/ns/a/sa/b", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := api.Push(first, ca.Bundle(), partner.Bundle()); err != nil {
		t.Fatal(err)
	}
	src, err := workloadapi.NewSource(ctx, api.Addr(), workloadapi.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = src.Close() })
	if _, err := src.GetX509BundleForTrustDomain(partner.TrustDomain()); err != nil {
		t.Errorf("federated bundle: %v", err)
	}

	updated := src.Updated()
	second, err := ca.Issue("spiffe://example.org/ns/a/sa/b", time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if err := api.Push(second, ca.Bundle()); err != nil {
		t.Fatal(err)
	}
	select {
	case <-updated:
	case <-ctx.Done():
		t.Fatal("timed out waiting for the pushed SVID")
	}
	got, err := src.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	if got.Certificates[0].SerialNumber.Cmp(second.Certificates[0].SerialNumber) != 0 {
		t.Fatal("source did not take the pushed SVID")
	}

	// A refusing agent gives a new workload nothing.
	api.Refuse(status.Error(codes.PermissionDenied, "no identity issued"))
	short, cancelShort := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancelShort()
	if _, err := workloadapi.NewSource(short, api.Addr(), workloadapi.WithLogger(slog.New(slog.DiscardHandler))); err == nil {
		t.Fatal("got an SVID from a refusing agent")
	}
}
