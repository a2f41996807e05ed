package identity

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"mesh/identity/internal/source"
)

// DefaultRefreshInterval is how often a FileSource polls its files when
// FileConfig.RefreshInterval is zero; it matches gRPC's file_watcher plugin.
const DefaultRefreshInterval = 10 * time.Minute

// FileConfig names the PEM files of a FileSource, as istio-agent writes
// them for proxyless gRPC (cert-chain.pem, key.pem, root-cert.pem) and as the
// gRPC file_watcher certificate provider (gRFC A29) describes them.
type FileConfig struct {
	// CertFile holds the SVID's certificate chain, leaf first.
	CertFile string
	// KeyFile holds the leaf's private key (PKCS#8, SEC 1 or PKCS#1).
	KeyFile string
	// CAFile holds the trust bundle of the SVID's trust domain.
	CAFile string
	// RefreshInterval is how often the files are read again whatever
	// their metadata says (changes that show in it are picked up within
	// about a second); zero means DefaultRefreshInterval.
	RefreshInterval time.Duration
}

// Validate reports the first missing or invalid field.
func (c FileConfig) Validate() error {
	switch {
	case c.CertFile == "":
		return errors.New("identity: file config: CertFile is required")
	case c.KeyFile == "":
		return errors.New("identity: file config: KeyFile is required")
	case c.CAFile == "":
		return errors.New("identity: file config: CAFile is required")
	case c.RefreshInterval < 0:
		return fmt.Errorf("identity: file config: RefreshInterval %v is negative", c.RefreshInterval)
	}
	return nil
}

// statInterval is how often a FileSource looks at its files' metadata
// (identity, size, modification time): a certificate rotated on disk, or
// rewritten for a new CA, is picked up within about that long. The full
// read every RefreshInterval stays as a fallback for changes metadata does
// not show.
const statInterval = 250 * time.Millisecond

// FileSource is a Source backed by PEM files that it watches for changes.
// A changed set of files that fails to load is logged and ignored: the last
// good SVID and bundle stay in force until a good set appears.
type FileSource struct {
	cfg    FileConfig
	logger *slog.Logger
	notify *source.Notifier

	cur source.Current

	// The poller is a timer, not a goroutine: a process holds one
	// FileSource per certificate provider for its whole life, and a
	// goroutine parked on tickers for each is a cost for nothing. pollMu
	// is held by a look at the files and by Close, so none runs after
	// Close returns.
	pollMu      sync.Mutex
	timer       *time.Timer
	stopped     bool
	last        pemSet         // the files as last read
	seen        [3]os.FileInfo // their metadata as last looked at
	nextRefresh time.Time      // when they are read again in any case

	done chan struct{} // closed by Close once the poller has stopped
	once sync.Once
}

var _ Source = (*FileSource)(nil)

// NewFileSource loads cfg's files and starts watching them: a change is
// picked up within about a second, and the files are read again every
// cfg.RefreshInterval in any case. It fails if the files cannot be read or
// do not form a valid SVID with its bundle; the error names the file and
// the problem.
// ctx bounds only the initial load; the poller runs until Close.
func NewFileSource(ctx context.Context, cfg FileConfig, opts ...Option) (*FileSource, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("identity: loading %s: %w", cfg.CertFile, err)
	}
	if cfg.RefreshInterval == 0 {
		cfg.RefreshInterval = DefaultRefreshInterval
	}
	o := newOptions(opts)
	// Look before reading: a change after this shows in the next look.
	seen := statSet(cfg)
	raw, err := readSet(cfg)
	if err != nil {
		return nil, fmt.Errorf("identity: %w", err)
	}
	svid, bundle, err := parseSet(cfg, raw, time.Now())
	if err != nil {
		return nil, fmt.Errorf("identity: %w", err)
	}
	s := &FileSource{
		cfg:    cfg,
		logger: o.Logger,
		notify: source.NewNotifier(),
		cur:    source.Current{SVID: svid, Bundle: bundle},
		last:   raw,
		seen:   seen,
		done:   make(chan struct{}),
	}
	s.logger.Info("identity: loaded SVID", "spiffe_id", svid.ID.String(),
		"serial", svid.Certificates[0].SerialNumber.String(), "not_after", svid.Certificates[0].NotAfter, "cert_file", cfg.CertFile)
	s.pollMu.Lock()
	s.nextRefresh = time.Now().Add(cfg.RefreshInterval)
	s.timer = time.AfterFunc(s.lookInterval(), s.poll)
	s.pollMu.Unlock()
	return s, nil
}

// lookInterval is how often the poller looks at the files' metadata.
func (s *FileSource) lookInterval() time.Duration {
	return min(statInterval, s.cfg.RefreshInterval)
}

// Updated returns a channel that is closed at the next successful reload
// (and at Close). Call it again after each wake-up to wait for the next one;
// take the channel before causing the change you wait for.
func (s *FileSource) Updated() <-chan struct{} { return s.notify.Updated() }

// GetX509SVID returns the current SVID. It implements x509svid.Source.
func (s *FileSource) GetX509SVID() (*x509svid.SVID, error) { return s.cur.GetX509SVID() }

// GetX509BundleForTrustDomain returns the bundle of the SVID's trust
// domain. It implements x509bundle.Source.
func (s *FileSource) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	return s.cur.GetX509BundleForTrustDomain(td)
}

// Close stops the poller, waiting for a look at the files in progress.
// Later calls to the getters return ErrClosed. Close is idempotent.
func (s *FileSource) Close() error {
	s.once.Do(func() {
		s.pollMu.Lock()
		s.stopped = true
		s.timer.Stop()
		s.pollMu.Unlock()
		close(s.done)
		s.cur.Mu.Lock()
		s.cur.Closed = true
		s.cur.Mu.Unlock()
		s.notify.Close()
	})
	return nil
}

// poll runs on the timer: it reads the files again when their metadata
// changed or the refresh interval has passed, and arms the timer again.
func (s *FileSource) poll() {
	s.pollMu.Lock()
	defer s.pollMu.Unlock()
	if s.stopped {
		return
	}
	defer s.timer.Reset(s.lookInterval())
	if now := time.Now(); now.Before(s.nextRefresh) {
		seen := statSet(s.cfg)
		if sameFiles(s.seen, seen) {
			return
		}
		s.seen = seen
	} else {
		s.nextRefresh = now.Add(s.cfg.RefreshInterval)
	}
	raw, err := readSet(s.cfg)
	if err != nil {
		// Files briefly missing while being replaced are normal; the next
		// look retries.
		s.logger.Warn("identity: reading certificate files failed; keeping current SVID", "error", err)
		return
	}
	if raw.equal(s.last) {
		return
	}
	// Remember the attempt even if it fails, so a bad set is logged once
	// rather than on every look.
	s.last = raw
	svid, bundle, err := parseSet(s.cfg, raw, time.Now())
	if err != nil {
		s.logger.Warn("identity: reloading certificate files failed; keeping current SVID", "error", err)
		return
	}
	s.cur.Mu.Lock()
	s.cur.SVID, s.cur.Bundle = svid, bundle
	s.cur.Mu.Unlock()
	s.logger.Info("identity: reloaded SVID", "spiffe_id", svid.ID.String(),
		"serial", svid.Certificates[0].SerialNumber.String(), "not_after", svid.Certificates[0].NotAfter)
	s.notify.Notify()
}

// statSet is the metadata of cfg's files; a nil entry is a file that
// could not be looked at.
func statSet(cfg FileConfig) [3]os.FileInfo {
	var out [3]os.FileInfo
	for i, path := range []string{cfg.CertFile, cfg.KeyFile, cfg.CAFile} {
		out[i], _ = os.Stat(path)
	}
	return out
}

// sameFiles reports whether two statSets show the same files, unchanged:
// an atomic rename makes another file, a rewrite in place changes the size
// or the modification time.
func sameFiles(a, b [3]os.FileInfo) bool {
	for i := range a {
		switch {
		case a[i] == nil || b[i] == nil:
			if a[i] != b[i] {
				return false
			}
		case !os.SameFile(a[i], b[i]) || a[i].Size() != b[i].Size() || !a[i].ModTime().Equal(b[i].ModTime()):
			return false
		}
	}
	return true
}

func readSet(cfg FileConfig) (pemSet, error) {
	var (
		raw pemSet
		err error
	)
	if raw.cert, err = os.ReadFile(cfg.CertFile); err != nil {
		return pemSet{}, fmt.Errorf("reading certificate file: %w", err)
	}
	if raw.key, err = os.ReadFile(cfg.KeyFile); err != nil {
		return pemSet{}, fmt.Errorf("reading key file: %w", err)
	}
	if raw.ca, err = os.ReadFile(cfg.CAFile); err != nil {
		return pemSet{}, fmt.Errorf("reading CA file: %w", err)
	}
	return raw, nil
}
