package identity

import (
	"errors"
	"log/slog"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// Source supplies the current X.509 SVID and the trust bundles to verify
// peers with. Implementations are safe for concurrent use.
type Source interface {
	x509svid.Source
	x509bundle.Source
}

// ErrClosed is returned by a source used after Close.
var ErrClosed = errors.New("identity: source closed")

// Option configures a source.
type Option interface {
	apply(*options)
}

type options struct {
	logger *slog.Logger
}

type optionFunc func(*options)

func (f optionFunc) apply(o *options) { f(o) }

// WithLogger sets the logger for reload events and errors; the default is
// slog.Default(), because a failed reload is worth seeing.
func WithLogger(logger *slog.Logger) Option {
	return optionFunc(func(o *options) {
		if logger != nil {
			o.logger = logger
		}
	})
}

func newOptions(opts []Option) options {
	o := options{logger: slog.Default()}
	for _, opt := range opts {
		if opt != nil {
			opt.apply(&o)
		}
	}
	return o
}
