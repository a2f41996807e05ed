package identity

import (
	"fmt"
	"sync"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// current is the SVID and trust bundle a source serves now, with the
// getters of Source; sources embed it and replace both under mu.
type current struct {
	mu     sync.RWMutex
	svid   *x509svid.SVID
	bundle *x509bundle.Bundle // the SVID's trust domain's
	closed bool
}

// GetX509SVID returns the current SVID. It implements x509svid.Source.
func (c *current) GetX509SVID() (*x509svid.SVID, error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.closed {
		return nil, ErrClosed
	}
	return c.svid, nil
}

// GetX509BundleForTrustDomain returns the bundle of the SVID's trust
// domain. It implements x509bundle.Source.
func (c *current) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	if c.closed {
		return nil, ErrClosed
	}
	if td != c.bundle.TrustDomain() {
		return nil, fmt.Errorf("identity: no bundle for trust domain %q", td.Name())
	}
	return c.bundle, nil
}
