// Package workloadapi is an identity source fed by a SPIFFE Workload API
// (a SPIRE agent): it keeps the FetchX509SVID stream open and takes every
// SVID and bundle the agent pushes. It is a package of its own so that
// programs that take their certificates from files, SDS or a CA do not link
// the Workload API's protocol.
//
//	src, err := workloadapi.NewSource(ctx, "unix:///run/spire/agent.sock")
//	m, err := mesh.New(ctx, mesh.WithCertificateProvider("default", src))
package workloadapi

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"net/url"
	"os"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	workloadpb "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"

	"mesh/identity"
	"mesh/identity/internal/source"
)

// EndpointSocketEnv is the environment variable that names the Workload API
// address when NewSource is given none, as in every SPIFFE
// library.
const EndpointSocketEnv = "SPIFFE_ENDPOINT_SOCKET"

// workloadAPIHeader must accompany every Workload API call: the SPIFFE spec
// uses it to refuse requests a browser or proxy was tricked into sending.
const workloadAPIHeader = "workload.spiffe.io"

// Option configures NewSource.
type Option interface{ apply(*options) }

type options struct {
	source.Options
	svidHint string
}

type optionFunc func(*options)

func (f optionFunc) apply(o *options) { f(o) }

// WithLogger sets the logger for stream failures and unusable updates; the
// default is slog.Default(), because a failure is worth seeing.
func WithLogger(logger *slog.Logger) Option {
	return optionFunc(func(o *options) { o.SetLogger(logger) })
}

// WithRetryBackoff bounds the delay between attempts to reach the Workload
// API after a failure: it starts at minDelay and doubles up to maxDelay
// (defaults 200ms and 30s). Non-positive values keep the default.
func WithRetryBackoff(minDelay, maxDelay time.Duration) Option {
	return optionFunc(func(o *options) { o.SetRetry(minDelay, maxDelay) })
}

// WithSVIDHint makes the Source use the SVID whose hint is hint when the
// Workload API offers several; without it the first one is used.
func WithSVIDHint(hint string) Option {
	return optionFunc(func(o *options) { o.svidHint = hint })
}

func newOptions(opts []Option) options {
	o := options{Options: source.DefaultOptions()}
	for _, opt := range opts {
		if opt != nil {
			opt.apply(&o)
		}
	}
	return o
}

// Source is an identity.Source fed by a SPIFFE Workload API (a SPIRE
// agent, or istio-agent's SDS-compatible socket that speaks it): it keeps a
// FetchX509SVID stream open and takes every SVID and bundle update the
// agent pushes. It reconnects with backoff when the stream breaks. An update
// that fails to parse or verify is logged and ignored, keeping the last good
// SVID.
//
// It speaks the Workload API protocol itself, over gRPC, rather than through
// go-spiffe's workloadapi package, whose JWT support would add a dependency
// to every binary that uses mesh.
type Source struct {
	addr   string
	logger *slog.Logger
	clock  source.Clock
	hint   string
	notify *source.Notifier
	conn   *grpc.ClientConn
	client workloadpb.SpiffeWorkloadAPIClient

	cancel context.CancelFunc
	done   chan struct{}
	ready  chan struct{} // closed at the first good update
	once   sync.Once

	mu      sync.RWMutex
	svid    *x509svid.SVID
	bundles *x509bundle.Set
	lastErr error // the latest failure, reported if the first SVID never comes
	closed  bool
}

var _ identity.Source = (*Source)(nil)

// NewSource connects to the Workload API at addr ("unix:///path"
// or "tcp://ip:port"; empty means $SPIFFE_ENDPOINT_SOCKET) and waits for the
// first SVID. ctx bounds only that wait: if it ends first, the error wraps
// ctx's error and names the last failure seen. The stream then stays open
// until Close.
func NewSource(ctx context.Context, addr string, opts ...Option) (*Source, error) {
	if addr == "" {
		addr = os.Getenv(EndpointSocketEnv)
		if addr == "" {
			return nil, fmt.Errorf("workloadapi: no address given and %s is unset", EndpointSocketEnv)
		}
	}
	target, err := workloadAPITarget(addr)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("workloadapi: %s: %w", addr, err)
	}
	o := newOptions(opts)
	conn, err := grpc.NewClient(target, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, fmt.Errorf("workloadapi: %s: %w", addr, err)
	}
	runCtx, cancel := context.WithCancel(context.Background())
	s := &Source{
		addr:   addr,
		logger: o.Logger,
		clock:  o.Clock,
		hint:   o.svidHint,
		notify: source.NewNotifier(),
		conn:   conn,
		client: workloadpb.NewSpiffeWorkloadAPIClient(conn),
		cancel: cancel,
		done:   make(chan struct{}),
		ready:  make(chan struct{}),
	}
	go s.run(runCtx, source.NewBackoff(o.RetryMin, o.RetryMax))
	select {
	case <-s.ready:
		return s, nil
	case <-ctx.Done():
		s.mu.RLock()
		last := s.lastErr
		s.mu.RUnlock()
		_ = s.Close()
		if last != nil {
			return nil, fmt.Errorf("workloadapi: %s: no SVID received: %w (last error: %w)", addr, ctx.Err(), last)
		}
		return nil, fmt.Errorf("workloadapi: %s: no SVID received: %w", addr, ctx.Err())
	}
}

// workloadAPITarget turns a SPIFFE endpoint address into a gRPC target.
func workloadAPITarget(addr string) (string, error) {
	u, err := url.Parse(addr)
	if err != nil {
		return "", fmt.Errorf("workloadapi: address %q: %w", addr, err)
	}
	switch u.Scheme {
	case "unix":
		path := u.Path
		if u.Opaque != "" {
			path = u.Opaque
		}
		switch {
		case u.Host != "":
			return "", fmt.Errorf("workloadapi: address %q: unix address has a host %q; want unix:///absolute/path", addr, u.Host)
		case !strings.HasPrefix(path, "/"):
			return "", fmt.Errorf("workloadapi: address %q: unix socket path must be absolute", addr)
		case u.RawQuery != "" || u.Fragment != "" || u.User != nil:
			return "", fmt.Errorf("workloadapi: address %q: unix address must not have a query, fragment or user", addr)
		}
		return "unix://" + path, nil
	case "tcp":
		if (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" || u.User != nil || u.Opaque != "" {
			return "", fmt.Errorf("workloadapi: address %q: tcp address must be tcp://ip:port and nothing else", addr)
		}
		ap, err := netip.ParseAddrPort(u.Host)
		if err != nil || ap.Port() == 0 {
			return "", fmt.Errorf("workloadapi: address %q: tcp address needs an IP literal and a port", addr)
		}
		return "passthrough:///" + ap.String(), nil
	default:
		return "", fmt.Errorf("workloadapi: address %q: scheme %q is not unix or tcp", addr, u.Scheme)
	}
}

// GetX509SVID returns the current SVID. It implements x509svid.Source.
func (s *Source) GetX509SVID() (*x509svid.SVID, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return nil, identity.ErrClosed
	}
	return s.svid, nil
}

// GetX509BundleForTrustDomain returns the bundle of td: the SVID's own
// trust domain or a federated one. It implements x509bundle.Source.
func (s *Source) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	if s.closed {
		return nil, identity.ErrClosed
	}
	if b, ok := s.bundles.Get(td); ok {
		return b, nil
	}
	return nil, fmt.Errorf("identity: no bundle for trust domain %q", td.Name())
}

// Updated returns a channel that is closed at the next accepted update (and
// at Close). Call it again after each wake-up to wait for the next one.
func (s *Source) Updated() <-chan struct{} { return s.notify.Updated() }

// Close ends the stream, waits for its goroutine and closes the connection.
// Later calls to the getters return identity.ErrClosed. Close is idempotent.
func (s *Source) Close() error {
	s.once.Do(func() {
		s.cancel()
		<-s.done
		_ = s.conn.Close()
		s.mu.Lock()
		s.closed = true
		s.mu.Unlock()
		s.notify.Close()
	})
	return nil
}

func (s *Source) run(ctx context.Context, retry *source.Backoff) {
	defer close(s.done)
	for {
		err := s.watch(ctx, retry)
		if ctx.Err() != nil {
			return
		}
		s.mu.Lock()
		s.lastErr = err
		s.mu.Unlock()
		d := retry.Delay()
		s.logger.Warn("workloadapi: stream failed; retrying", "address", s.addr, "error", err, "retry_in", d)
		t := s.clock.NewTimer(d)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C():
		}
	}
}

// watch holds one FetchX509SVID stream until it fails.
func (s *Source) watch(ctx context.Context, retry *source.Backoff) error {
	ctx = metadata.AppendToOutgoingContext(ctx, workloadAPIHeader, "true")
	stream, err := s.client.FetchX509SVID(ctx, &workloadpb.X509SVIDRequest{})
	if err != nil {
		return fmt.Errorf("opening FetchX509SVID stream: %w", err)
	}
	for {
		resp, err := stream.Recv()
		if err != nil {
			return fmt.Errorf("FetchX509SVID stream: %w", err)
		}
		// A healthy stream earns a fast reconnect next time it breaks.
		retry.Reset()
		svid, bundles, err := s.parse(resp)
		if err != nil {
			s.mu.Lock()
			s.lastErr = err
			s.mu.Unlock()
			s.logger.Warn("workloadapi: the agent sent an unusable update; keeping current SVID", "address", s.addr, "error", err)
			continue
		}
		s.mu.Lock()
		s.svid, s.bundles, s.lastErr = svid, bundles, nil
		s.mu.Unlock()
		s.logger.Info("workloadapi: received SVID", "spiffe_id", svid.ID.String(),
			"serial", svid.Certificates[0].SerialNumber.String(), "not_after", svid.Certificates[0].NotAfter)
		select {
		case <-s.ready:
			s.notify.Notify()
		default:
			close(s.ready)
		}
	}
}

// parse checks one X509SVIDResponse and returns the chosen SVID with every
// bundle it carries. Errors name the SVID or trust domain at fault.
func (s *Source) parse(resp *workloadpb.X509SVIDResponse) (*x509svid.SVID, *x509bundle.Set, error) {
	if len(resp.GetSvids()) == 0 {
		return nil, nil, errors.New("response has no SVIDs")
	}
	chosen := resp.GetSvids()[0]
	if s.hint != "" {
		chosen = nil
		for _, c := range resp.GetSvids() {
			if c.GetHint() == s.hint {
				chosen = c
				break
			}
		}
		if chosen == nil {
			return nil, nil, fmt.Errorf("response has no SVID with hint %q", s.hint)
		}
	}
	name := chosen.GetSpiffeId()
	svid, err := x509svid.ParseRaw(chosen.GetX509Svid(), chosen.GetX509SvidKey())
	if err != nil {
		return nil, nil, fmt.Errorf("svid %q: x509_svid/x509_svid_key: %w", name, err)
	}
	if svid.ID.String() != name {
		return nil, nil, fmt.Errorf("svid %q: spiffe_id does not match the certificate's ID %s", name, svid.ID)
	}
	td := svid.ID.TrustDomain()
	own, err := x509bundle.ParseRaw(td, chosen.GetBundle())
	if err != nil {
		return nil, nil, fmt.Errorf("svid %q: bundle: %w", name, err)
	}
	if own.Empty() {
		return nil, nil, fmt.Errorf("svid %q: bundle: no certificates", name)
	}
	if _, _, err := x509svid.Verify(svid.Certificates, own, x509svid.WithTime(s.clock.Now())); err != nil {
		return nil, nil, fmt.Errorf("svid %q: does not verify against its bundle: %w", name, err)
	}
	set := x509bundle.NewSet(own)
	feds := resp.GetFederatedBundles()
	names := make([]string, 0, len(feds))
	for k := range feds {
		names = append(names, k)
	}
	sort.Strings(names) // report the same bad entry every time
	for _, k := range names {
		ftd, err := spiffeid.TrustDomainFromString(k)
		if err != nil {
			return nil, nil, fmt.Errorf("federated_bundles[%q]: %w", k, err)
		}
		if ftd == td {
			continue // the SVID's own bundle wins
		}
		b, err := x509bundle.ParseRaw(ftd, feds[k])
		if err != nil {
			return nil, nil, fmt.Errorf("federated_bundles[%q]: %w", k, err)
		}
		set.Add(b)
	}
	return svid, set, nil
}
