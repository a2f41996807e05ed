package identity_test

import (
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"mesh/identity"
	"mesh/identity/internal/sourcetest"
	"mesh/internal/testutil"
)

func TestStaticSource(t *testing.T) {
	ctx := testutil.Context(t)
	ca := sourcetest.NewCA(t, testTD)
	first := sourcetest.Issue(t, ca, clientID)
	src := identity.NewStaticSource(first, ca.Bundle())

	if got := sourcetest.SerialOf(t, src); got.Cmp(first.Certificates[0].SerialNumber) != 0 {
		t.Fatalf("serial = %v, want %v", got, first.Certificates[0].SerialNumber)
	}
	if _, err := src.GetX509BundleForTrustDomain(ca.TrustDomain()); err != nil {
		t.Fatalf("own trust domain: %v", err)
	}
	if _, err := src.GetX509BundleForTrustDomain(spiffeid.RequireTrustDomainFromString("other.org")); err == nil ||
		!strings.Contains(err.Error(), `no bundle for trust domain "other.org"`) {
		t.Fatalf("foreign trust domain: err = %v", err)
	}

	updated := src.Updated()
	next := sourcetest.Issue(t, ca, clientID)
	src.Set(next, ca.Bundle())
	sourcetest.WaitClosed(ctx, t, updated, "Set")
	if got := sourcetest.SerialOf(t, src); got.Cmp(next.Certificates[0].SerialNumber) != 0 {
		t.Fatalf("serial after Set = %v, want %v", got, next.Certificates[0].SerialNumber)
	}
	select {
	case <-src.Updated():
		t.Fatal("the channel after a Set must wait for the next Set")
	default:
	}
}

func TestStaticSourceEmpty(t *testing.T) {
	src := identity.NewStaticSource(nil, nil)
	if _, err := src.GetX509SVID(); err == nil || !strings.Contains(err.Error(), "no SVID") {
		t.Errorf("GetX509SVID err = %v, want no SVID", err)
	}
	if _, err := src.GetX509BundleForTrustDomain(spiffeid.RequireTrustDomainFromString(testTD)); err == nil {
		t.Error("GetX509BundleForTrustDomain on an empty source succeeded")
	}
}
