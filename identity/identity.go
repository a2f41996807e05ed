package identity

import (
	"crypto/x509"
	"log/slog"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"mesh/identity/internal/source"
)

// Source supplies the current X.509 SVID and the trust bundles to verify
// peers with. Implementations are safe for concurrent use.
type Source interface {
	x509svid.Source
	x509bundle.Source
}

// ErrClosed is returned by a source used after Close.
var ErrClosed = source.ErrClosed

// Option configures a source.
type Option interface {
	apply(*options)
}

type options struct {
	source.Options
}

type optionFunc func(*options)

func (f optionFunc) apply(o *options) { f(o) }

// WithLogger sets the logger for reload events and errors; the default is
// slog.Default(), because a failed reload is worth seeing.
func WithLogger(logger *slog.Logger) Option {
	return optionFunc(func(o *options) { o.SetLogger(logger) })
}

func newOptions(opts []Option) options {
	o := options{source.DefaultOptions()}
	for _, opt := range opts {
		if opt != nil {
			opt.apply(&o)
		}
	}
	return o
}

// RenewalTime is when a certificate should be replaced: half-way through its
// validity, as istio-agent and SPIRE agents do, leaving the other half to
// ride out a CA outage.
func RenewalTime(cert *x509.Certificate) time.Time {
	return cert.NotBefore.Add(cert.NotAfter.Sub(cert.NotBefore) / 2)
}
