package identity

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"strings"
	"sync"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"mesh/xdsclient"

	"mesh/identity/internal/source"
)

// SecretWatcher watches SDS secrets; *xdsclient.Client implements it.
type SecretWatcher interface {
	WatchSecret(name string, fn func(xdsclient.Event[*xdsclient.Secret])) (cancel func())
}

var _ SecretWatcher = (*xdsclient.Client)(nil)

// SDSSource is a Source fed by SDS secrets pushed on the xDS stream: the
// certificate secret (istiod's "default") supplies the SVID and the roots
// secret ("ROOTCA") the trust bundles. Every pushed version replaces the
// one in force, so the next handshake presents the new certificate with no
// restart. A version that does not parse, an xDS error or a deletion is
// logged and the last good secret stays in force.
//
// It starts no goroutine of its own: the watcher's callbacks update it.
type SDSSource struct {
	certName, rootsName string
	// either: one secret (certName == rootsName) serves as whichever kind
	// the control plane sends; see SDSProviders.
	either  bool
	logger  *slog.Logger
	clock   source.Clock
	notify  *source.Notifier
	cancels []func()
	ready   chan struct{} // closed once every named secret arrived
	once    sync.Once

	mu        sync.RWMutex
	svid      *x509svid.SVID
	bundles   map[spiffeid.TrustDomain]*x509bundle.Bundle
	trustedCA *x509bundle.Bundle // roots for any trust domain without a bundle; trust domain unset
	haveRoots bool
	lastErr   error
	closed    bool
}

var _ Source = (*SDSSource)(nil)

// NewSDSSource watches the SDS secrets certName (a TLS certificate) and
// rootsName (a validation context) through watcher and waits until both
// have arrived. Either name may be empty, for an identity-only or a
// roots-only source, but not both. ctx bounds only that first wait: if it
// ends first, the error wraps ctx's error and names the last problem seen.
// Close stops the watches.
func NewSDSSource(ctx context.Context, watcher SecretWatcher, certName, rootsName string, opts ...Option) (*SDSSource, error) {
	if watcher == nil {
		return nil, errors.New("identity: sds: no secret watcher")
	}
	if certName == "" && rootsName == "" {
		return nil, errors.New("identity: sds: neither a certificate nor a roots secret name given")
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("identity: sds secrets %q/%q: %w", certName, rootsName, err)
	}
	s := startSDSSource(watcher, certName, rootsName, false, newOptions(opts))
	select {
	case <-s.ready:
		return s, nil
	case <-ctx.Done():
		s.mu.RLock()
		last := s.lastErr
		s.mu.RUnlock()
		_ = s.Close()
		if last != nil {
			return nil, fmt.Errorf("identity: sds secrets %q/%q not received: %w (last error: %w)", certName, rootsName, ctx.Err(), last)
		}
		return nil, fmt.Errorf("identity: sds secrets %q/%q not received: %w", certName, rootsName, ctx.Err())
	}
}

// startSDSSource registers the watches without waiting for a secret.
func startSDSSource(watcher SecretWatcher, certName, rootsName string, either bool, o options) *SDSSource {
	s := &SDSSource{
		certName:  certName,
		rootsName: rootsName,
		either:    either,
		logger:    o.Logger,
		clock:     o.Clock,
		notify:    source.NewNotifier(),
		ready:     make(chan struct{}),
	}
	var cancels []func()
	switch {
	case either:
		cancels = append(cancels, watcher.WatchSecret(certName, s.onEither))
	default:
		if certName != "" {
			cancels = append(cancels, watcher.WatchSecret(certName, s.onCertificate))
		}
		if rootsName != "" {
			cancels = append(cancels, watcher.WatchSecret(rootsName, s.onRoots))
		}
	}
	// Callbacks never read cancels, so setting it after the watches
	// started is safe; Close reads it under s.mu.
	s.mu.Lock()
	s.cancels = cancels
	s.mu.Unlock()
	return s
}

// GetX509SVID returns the SVID of the certificate secret. It implements
// x509svid.Source.
func (s *SDSSource) GetX509SVID() (*x509svid.SVID, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	switch {
	case s.closed:
		return nil, ErrClosed
	case s.certName == "":
		return nil, errors.New("identity: sds source has no certificate secret (roots only)")
	case s.svid == nil && s.either && s.haveRoots:
		return nil, fmt.Errorf("identity: sds secret %q is a validation context, not a certificate", s.certName)
	case s.svid == nil:
		return nil, fmt.Errorf("identity: sds secret %q not received yet", s.certName)
	}
	return s.svid, nil
}

// GetX509BundleForTrustDomain returns td's bundle from the roots secret:
// its SPIFFE bundle for td, else its trusted_ca. It implements
// x509bundle.Source.
func (s *SDSSource) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	switch {
	case s.closed:
		return nil, ErrClosed
	case s.rootsName == "":
		return nil, errors.New("identity: sds source has no roots secret (identity only)")
	}
	if b, ok := s.bundles[td]; ok {
		return b, nil
	}
	if s.trustedCA != nil {
		return x509bundle.FromX509Authorities(td, s.trustedCA.X509Authorities()), nil
	}
	if !s.haveRoots {
		if s.either && s.svid != nil {
			return nil, fmt.Errorf("identity: sds secret %q is a certificate, not a validation context", s.rootsName)
		}
		return nil, fmt.Errorf("identity: sds secret %q not received yet", s.rootsName)
	}
	return nil, fmt.Errorf("identity: sds secret %q has no bundle for trust domain %q", s.rootsName, td.Name())
}

// Updated returns a channel that is closed at the next accepted secret
// (and at Close). Call it again after each wake-up to wait for the next one.
func (s *SDSSource) Updated() <-chan struct{} { return s.notify.Updated() }

// Close cancels the watches. Later calls to the getters return ErrClosed.
// Close is idempotent.
func (s *SDSSource) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	cancels := s.cancels
	s.mu.Unlock()
	for _, cancel := range cancels {
		cancel()
	}
	s.notify.Close()
	return nil
}

// onEither takes a secret of either kind, for a source that serves one
// secret name in whatever role it was referenced.
func (s *SDSSource) onEither(ev xdsclient.Event[*xdsclient.Secret]) {
	if s.skipEvent(s.certName, ev) {
		return
	}
	if ev.Resource.Validation != nil && ev.Resource.Certificate == nil {
		s.onRoots(ev)
		return
	}
	s.onCertificate(ev)
}

func (s *SDSSource) onCertificate(ev xdsclient.Event[*xdsclient.Secret]) {
	if s.skipEvent(s.certName, ev) {
		return
	}
	svid, err := s.parseCertificate(ev.Resource)
	if err != nil {
		s.reject(s.certName, err)
		return
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.svid, s.lastErr = svid, nil
	// A root rotation may push the new certificate before the new roots:
	// a mismatch is worth a warning, not a rejection.
	var verifyErr error
	if b, ok := s.bundles[svid.ID.TrustDomain()]; ok {
		_, _, verifyErr = x509svid.Verify(svid.Certificates, b, x509svid.WithTime(s.clock.Now()))
	}
	s.mu.Unlock()
	leaf := svid.Certificates[0]
	s.logger.Info("identity: sds SVID", "secret", s.certName, "spiffe_id", svid.ID.String(),
		"serial", leaf.SerialNumber.String(), "not_after", leaf.NotAfter)
	if verifyErr != nil {
		s.logger.Warn("identity: sds SVID does not verify against the current roots", "secret", s.certName, "spiffe_id", svid.ID.String(), "error", verifyErr)
	}
	s.accepted()
}

func (s *SDSSource) onRoots(ev xdsclient.Event[*xdsclient.Secret]) {
	if s.skipEvent(s.rootsName, ev) {
		return
	}
	bundles, trusted, err := parseRoots(ev.Resource)
	if err != nil {
		s.reject(s.rootsName, err)
		return
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.bundles, s.trustedCA, s.haveRoots, s.lastErr = bundles, trusted, true, nil
	s.mu.Unlock()
	s.logger.Info("identity: sds roots", "secret", s.rootsName,
		"trust_domains", slices.Sorted(func(yield func(string) bool) {
			for td := range bundles {
				if !yield(td.Name()) {
					return
				}
			}
		}), "trusted_ca", trusted != nil)
	s.accepted()
}

// skipEvent handles the events that carry no new secret, and reports
// whether ev is one of them.
func (s *SDSSource) skipEvent(name string, ev xdsclient.Event[*xdsclient.Secret]) bool {
	switch {
	case ev.Err != nil:
		s.reject(name, ev.Err)
		return true
	case ev.NotFound:
		// Dropping the identity would break every connection; the last
		// secret stays until it expires or a new one comes.
		s.reject(name, errors.New("the control plane says the secret does not exist"))
		return true
	case ev.Resource == nil:
		s.reject(name, errors.New("empty secret"))
		return true
	}
	return false
}

func (s *SDSSource) reject(name string, err error) {
	err = fmt.Errorf("sds secret %q: %w", name, err)
	s.mu.Lock()
	closed := s.closed
	s.lastErr = err
	s.mu.Unlock()
	if !closed {
		s.logger.Warn("identity: keeping the last good secret", "secret", name, "error", err)
	}
}

// accepted wakes Updated's waiters, or completes the first wait once
// every named secret is in.
func (s *SDSSource) accepted() {
	s.mu.RLock()
	complete := (s.certName == "" || s.svid != nil) && (s.rootsName == "" || s.haveRoots)
	if s.either {
		complete = s.svid != nil || s.haveRoots
	}
	s.mu.RUnlock()
	if !complete {
		return
	}
	first := false
	s.once.Do(func() { close(s.ready); first = true })
	if !first {
		s.notify.Notify()
	}
}

func (s *SDSSource) parseCertificate(sec *xdsclient.Secret) (*x509svid.SVID, error) {
	if sec.Certificate == nil {
		return nil, errors.New("is not a tls_certificate secret")
	}
	// Errors from x509svid name what is wrong, never the key itself.
	svid, err := x509svid.Parse(sec.Certificate.ChainPEM, sec.Certificate.KeyPEM)
	if err != nil {
		return nil, fmt.Errorf("tls_certificate: %w", err)
	}
	leaf := svid.Certificates[0]
	if now := s.clock.Now(); now.After(leaf.NotAfter) {
		return nil, fmt.Errorf("tls_certificate: certificate of %s expired at %s", svid.ID, leaf.NotAfter.UTC().Format("2006-01-02T15:04:05Z"))
	}
	return svid, nil
}

func parseRoots(sec *xdsclient.Secret) (map[spiffeid.TrustDomain]*x509bundle.Bundle, *x509bundle.Bundle, error) {
	if sec.Validation == nil {
		return nil, nil, errors.New("is not a validation_context secret")
	}
	out := make(map[spiffeid.TrustDomain]*x509bundle.Bundle, len(sec.Validation.Bundles))
	for _, name := range slices.Sorted(maps.Keys(sec.Validation.Bundles)) {
		td, err := spiffeid.TrustDomainFromString(name)
		if err != nil {
			return nil, nil, fmt.Errorf("trust domain %q: %w", name, err)
		}
		certs, err := source.ParseCertificates(sec.Validation.Bundles[name])
		if err != nil {
			return nil, nil, fmt.Errorf("bundle of trust domain %q: %w", name, err)
		}
		out[td] = x509bundle.FromX509Authorities(td, certs)
	}
	var trusted *x509bundle.Bundle
	if len(sec.Validation.TrustedCA) > 0 {
		certs, err := source.ParseCertificates(sec.Validation.TrustedCA)
		if err != nil {
			return nil, nil, fmt.Errorf("trusted_ca: %w", err)
		}
		trusted = x509bundle.FromX509Authorities(spiffeid.TrustDomain{}, certs)
	}
	if len(out) == 0 && trusted == nil {
		return nil, nil, errors.New("validation_context: no roots")
	}
	return out, trusted, nil
}

// SDSProviders serves the SDS secrets that TLS settings reference, by the
// provider name the xDS client gives them (xdsclient.SDSProviderName, e.g.
// "sds:default"): its Provider method satisfies transport.Providers. The
// first lookup of a name starts an SDSSource watching that one secret,
// which serves as a certificate or as roots according to what the control
// plane sends; until the secret arrives its getters return an error, so a
// handshake fails and gRPC retries it. Call Ready to wait for a secret.
type SDSProviders struct {
	watcher SecretWatcher
	opts    options

	mu      sync.Mutex
	sources map[string]*SDSSource
	closed  bool
}

// NewSDSProviders returns an empty set; sources start on first lookup.
func NewSDSProviders(watcher SecretWatcher, opts ...Option) *SDSProviders {
	return &SDSProviders{watcher: watcher, opts: newOptions(opts), sources: map[string]*SDSSource{}}
}

// Provider returns the source of the SDS provider name ("sds:<secret>"),
// starting it if needed; false for any other name or after Close.
func (p *SDSProviders) Provider(name string) (Source, bool) {
	src := p.source(name)
	if src == nil {
		return nil, false
	}
	return src, true
}

func (p *SDSProviders) source(name string) *SDSSource {
	secret, ok := strings.CutPrefix(name, xdsclient.SDSProviderName(""))
	if !ok || secret == "" || p == nil || p.watcher == nil {
		return nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil
	}
	src := p.sources[name]
	if src == nil {
		src = startSDSSource(p.watcher, secret, secret, true, p.opts)
		p.sources[name] = src
	}
	return src
}

// Ready starts the source of provider name if needed and waits until its
// secret first arrives, or ctx ends (the error then names the last
// problem seen).
func (p *SDSProviders) Ready(ctx context.Context, name string) error {
	src := p.source(name)
	if src == nil {
		return fmt.Errorf("identity: %q is not an SDS provider name (want %s<secret>) or the set is closed", name, xdsclient.SDSProviderName(""))
	}
	select {
	case <-src.ready:
		return nil
	case <-ctx.Done():
		src.mu.RLock()
		last := src.lastErr
		src.mu.RUnlock()
		if last != nil {
			return fmt.Errorf("identity: sds secret %q not received: %w (last error: %w)", src.certName, ctx.Err(), last)
		}
		return fmt.Errorf("identity: sds secret %q not received: %w", src.certName, ctx.Err())
	}
}

// Close closes every source started. Close is idempotent.
func (p *SDSProviders) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed = true
	sources := p.sources
	p.sources = nil
	p.mu.Unlock()
	for _, src := range sources {
		_ = src.Close()
	}
	return nil
}
