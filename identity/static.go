package identity

import (
	"errors"
	"fmt"
	"sync"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"mesh/identity/internal/source"
)

// StaticSource is an in-memory Source, for tests and for identities that
// arrive by other means (an SDS stream, a CA call). Set rotates it.
type StaticSource struct {
	notify *source.Notifier

	mu     sync.RWMutex
	svid   *x509svid.SVID
	bundle *x509bundle.Bundle
}

var _ Source = (*StaticSource)(nil)

// NewStaticSource returns a source serving svid and bundle. Either may be
// nil: a roots-only or identity-only source.
func NewStaticSource(svid *x509svid.SVID, bundle *x509bundle.Bundle) *StaticSource {
	return &StaticSource{notify: source.NewNotifier(), svid: svid, bundle: bundle}
}

// Set replaces the SVID and bundle and wakes Updated's waiters.
func (s *StaticSource) Set(svid *x509svid.SVID, bundle *x509bundle.Bundle) {
	s.mu.Lock()
	s.svid, s.bundle = svid, bundle
	s.mu.Unlock()
	s.notify.Notify()
}

// GetX509SVID returns the current SVID. It implements x509svid.Source.
func (s *StaticSource) GetX509SVID() (*x509svid.SVID, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.svid == nil {
		return nil, errors.New("identity: static source has no SVID")
	}
	return s.svid, nil
}

// GetX509BundleForTrustDomain returns the bundle if it belongs to td. It
// implements x509bundle.Source.
func (s *StaticSource) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.bundle == nil || s.bundle.TrustDomain() != td {
		return nil, fmt.Errorf("identity: no bundle for trust domain %q", td.Name())
	}
	return s.bundle, nil
}

// Updated returns a channel that is closed at the next Set. Call it again
// after each wake-up to wait for the next one.
func (s *StaticSource) Updated() <-chan struct{} { return s.notify.Updated() }
