// Package sourcetest holds what the tests of identity's source packages
// (csr, workloadapi) share.
//
//	ctx := testutil.Context(t)
//	sourcetest.WaitClosed(ctx, t, src.Updated(), "a rotation")
package sourcetest

import (
	"context"
	"errors"
	"log/slog"
	"math/big"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"mesh/identity"
	"mesh/identity/identitytest"
)

// TD is the tests' trust domain.
const TD = "example.org"

// NewCA returns a CA for trust domain td.
func NewCA(t *testing.T, td string) *identitytest.CA {
	t.Helper()
	ca, err := identitytest.NewCA(td)
	if err != nil {
		t.Fatal(err)
	}
	return ca
}

// WaitClosed waits until ch is closed, failing the test when ctx ends.
func WaitClosed(ctx context.Context, t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-ctx.Done():
		t.Fatalf("timed out waiting for %s", what)
	}
}

// ClientID is an identity the tests issue SVIDs for.
const ClientID = "spiffe://example.org/ns/default/sa/client"

// Issue has ca issue an hour-long SVID for id.
func Issue(t *testing.T, ca *identitytest.CA, id string) *x509svid.SVID {
	t.Helper()
	svid, err := ca.Issue(id, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return svid
}

// SerialOf returns the serial number of src's current SVID.
func SerialOf(t *testing.T, src identity.Source) *big.Int {
	t.Helper()
	svid, err := src.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	return svid.Certificates[0].SerialNumber
}

// RecordError returns the "error" attribute of r.
func RecordError(r slog.Record) string {
	var msg string
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "error" {
			msg = a.Value.String()
		}
		return true
	})
	return msg
}

// ClosedSource is what CheckClosed needs of a source: Close and its reads.
type ClosedSource interface {
	identity.Source
	Close() error
}

// CheckClosed checks a source just closed: Close woke the Updated channel
// taken before it, reads fail with identity.ErrClosed, and a second Close
// is harmless.
func CheckClosed(t *testing.T, src ClosedSource, td spiffeid.TrustDomain, updated <-chan struct{}) {
	t.Helper()
	select {
	case <-updated:
	default:
		t.Fatal("Close did not wake Updated waiters")
	}
	if _, err := src.GetX509SVID(); !errors.Is(err, identity.ErrClosed) {
		t.Errorf("GetX509SVID after Close: err = %v, want ErrClosed", err)
	}
	if _, err := src.GetX509BundleForTrustDomain(td); !errors.Is(err, identity.ErrClosed) {
		t.Errorf("GetX509BundleForTrustDomain after Close: err = %v, want ErrClosed", err)
	}
	if err := src.Close(); err != nil {
		t.Errorf("second Close = %v", err)
	}
}
