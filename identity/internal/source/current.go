package source

import (
	"fmt"
	"sync"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Current is the SVID and trust bundle a source serves now, with the
// getters of identity.Source; a source keeps one in a field and replaces
// both under Mu.
type Current struct {
	Mu     sync.RWMutex
	SVID   *x509svid.SVID
	Bundle *x509bundle.Bundle // the SVID's trust domain's
	Closed bool
}

// GetX509SVID returns the current SVID. It implements x509svid.Source.
func (c *Current) GetX509SVID() (*x509svid.SVID, error) {
	c.Mu.RLock()
	defer c.Mu.RUnlock()
	if c.Closed {
		return nil, ErrClosed
	}
	return c.SVID, nil
}

// GetX509BundleForTrustDomain returns the bundle of the SVID's trust
// domain. It implements x509bundle.Source.
func (c *Current) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	c.Mu.RLock()
	defer c.Mu.RUnlock()
	if c.Closed {
		return nil, ErrClosed
	}
	if td != c.Bundle.TrustDomain() {
		return nil, fmt.Errorf("identity: no bundle for trust domain %q", td.Name())
	}
	return c.Bundle, nil
}
