// Package csr is an agentless identity source: a workload makes its own
// key and asks a CA speaking Istio's IstioCertificateService (istiod on
// port 15012, or mesh's embedded control plane) for its SVID with a bearer
// token, and renews at half-life, the way istio-agent does but inside the
// process. It is a package of its own so that programs that take their
// certificates from files, SDS or a Workload API do not link Istio's API.
//
//	src, err := csr.NewSource(ctx, csr.Config{
//		Addr: "istiod.istio-system.svc:15012", Token: readToken, TLS: caTLS,
//		TrustDomain: "cluster.local", Namespace: "shop", ServiceAccount: "payments",
//	})
//	m, err := mesh.New(ctx, mesh.WithCertificateProvider("default", src))
package csr

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	securitypb "istio.io/api/security/v1alpha1"

	"mesh/identity"
	"mesh/identity/internal/source"
)

// csrCallTimeout bounds one CreateCertificate call made by the rotation
// loop; the first call is bounded by NewSource's context instead.
const csrCallTimeout = 30 * time.Second

// Option configures NewSource.
type Option interface{ apply(*options) }

type options struct {
	source.Options
	keyFile string
}

type optionFunc func(*options)

func (f optionFunc) apply(o *options) { f(o) }

// WithLogger sets the logger for renewals and their failures; the default
// is slog.Default(), because a failed renewal is worth seeing.
func WithLogger(logger *slog.Logger) Option {
	return optionFunc(func(o *options) { o.SetLogger(logger) })
}

// WithRetryBackoff bounds the delay between attempts to reach the CA after
// a failure: it starts at minDelay and doubles up to maxDelay (defaults
// 200ms and 30s). Non-positive values keep the default.
func WithRetryBackoff(minDelay, maxDelay time.Duration) Option {
	return optionFunc(func(o *options) { o.SetRetry(minDelay, maxDelay) })
}

// WithKeyFile makes the Source write each new private key to path (PKCS#8
// PEM, mode 0600, replaced atomically), for a process that hands the key to
// something outside it. Without it the key never leaves memory.
func WithKeyFile(path string) Option {
	return optionFunc(func(o *options) { o.keyFile = path })
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

// Config tells a Source which CA to ask and for which identity. The
// CA speaks Istio's IstioCertificateService (istiod on port 15012, or mesh's
// embedded control plane).
type Config struct {
	// Addr is the CA's gRPC address, "host:port".
	Addr string
	// Token returns the bearer token proving the workload's identity to the
	// CA (a Kubernetes service-account token for istiod, a token from
	// controlplane.Server.WorkloadToken for the embedded one). It is called
	// before every request, so it may return a refreshed token.
	Token func(ctx context.Context) (string, error)
	// TrustDomain, Namespace and ServiceAccount name the identity asked for:
	// spiffe://<TrustDomain>/ns/<Namespace>/sa/<ServiceAccount>.
	TrustDomain    string
	Namespace      string
	ServiceAccount string
	// TTL is the lifetime asked for; zero lets the CA choose. The CA may
	// grant less.
	TTL time.Duration
	// RootPEM is the trust bundle of TrustDomain: issued chains must verify
	// against it, and peers are verified with it. If empty, the root is the
	// last certificate of the CA's response, as istio-agent does; that
	// trusts whatever answers at Addr, so leave it empty only when the CA
	// channel is authenticated (TLS) or cannot be intercepted (loopback).
	RootPEM []byte
	// TLS secures the channel to the CA. Nil means plaintext, which sends the
	// bearer token in the clear; it must then be asked for with Insecure.
	TLS *tls.Config
	// Insecure allows a plaintext CA channel (TLS nil). Use it only for a CA
	// on loopback. mesh's embedded control plane serves TLS on its xDS
	// port (RootCAs from its RootPEM; its certificate names 127.0.0.1 and
	// controlplane.CAServerName) unless started with WithPlaintextXDS.
	Insecure bool
}

// Validate reports the first missing or invalid field.
func (c Config) Validate() error {
	switch {
	case c.Addr == "":
		return errors.New("csr: config: Addr is required")
	case c.Token == nil:
		return errors.New("csr: config: Token is required")
	case c.TTL < 0:
		return fmt.Errorf("csr: config: TTL %v is negative", c.TTL)
	case c.TTL > 0 && c.TTL < time.Second:
		return fmt.Errorf("csr: config: TTL %v is under the CA's one-second granularity", c.TTL)
	case c.TLS == nil && !c.Insecure:
		return errors.New("csr: config: TLS is nil; set Insecure to send the token over plaintext (loopback only)")
	case c.TLS != nil && c.Insecure:
		return errors.New("csr: config: TLS and Insecure are both set")
	}
	if _, err := c.spiffeID(); err != nil {
		return err
	}
	if len(c.RootPEM) > 0 {
		if _, err := source.ParseCertificates(c.RootPEM); err != nil {
			return fmt.Errorf("csr: config: RootPEM: %w", err)
		}
	}
	return nil
}

func (c Config) spiffeID() (spiffeid.ID, error) {
	td, err := spiffeid.TrustDomainFromString(c.TrustDomain)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("csr: config: TrustDomain %q: %w", c.TrustDomain, err)
	}
	if c.Namespace == "" {
		return spiffeid.ID{}, errors.New("csr: config: Namespace is required")
	}
	if c.ServiceAccount == "" {
		return spiffeid.ID{}, errors.New("csr: config: ServiceAccount is required")
	}
	id, err := spiffeid.FromSegments(td, "ns", c.Namespace, "sa", c.ServiceAccount)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("csr: config: Namespace %q / ServiceAccount %q: %w", c.Namespace, c.ServiceAccount, err)
	}
	return id, nil
}

// Source is an identity.Source that gets its SVID from a CA, the way istio-agent
// does but inside the process: it generates an ECDSA P-256 key, sends a
// certificate signing request for its SPIFFE ID with a bearer token, and
// repeats with a fresh key at half of each certificate's lifetime. A failed
// renewal is logged and retried with backoff while the current SVID stays
// in force.
type Source struct {
	cfg     Config
	id      spiffeid.ID
	roots   []*x509.Certificate // from cfg.RootPEM; nil means take the CA's
	logger  *slog.Logger
	clock   source.Clock
	keyFile string
	notify  *source.Notifier
	conn    *grpc.ClientConn
	client  securitypb.IstioCertificateServiceClient

	cancel context.CancelFunc
	done   chan struct{}
	once   sync.Once

	cur source.Current
}

var _ identity.Source = (*Source)(nil)

// NewSource obtains a first SVID from the CA at cfg.Addr and starts
// renewing it. ctx bounds only that first request; renewals run until
// Close.
func NewSource(ctx context.Context, cfg Config, opts ...Option) (*Source, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	id, _ := cfg.spiffeID()
	o := newOptions(opts)
	var roots []*x509.Certificate
	if len(cfg.RootPEM) > 0 {
		roots, _ = source.ParseCertificates(cfg.RootPEM)
	}
	creds := insecure.NewCredentials()
	if cfg.TLS != nil {
		creds = credentials.NewTLS(cfg.TLS)
	}
	conn, err := grpc.NewClient(cfg.Addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		return nil, fmt.Errorf("csr: ca %s: %w", cfg.Addr, err)
	}
	s := &Source{
		cfg:     cfg,
		id:      id,
		roots:   roots,
		logger:  o.Logger,
		clock:   o.Clock,
		keyFile: o.keyFile,
		notify:  source.NewNotifier(),
		conn:    conn,
		client:  securitypb.NewIstioCertificateServiceClient(conn),
		done:    make(chan struct{}),
	}
	if err := s.renew(ctx); err != nil {
		_ = conn.Close()
		return nil, err
	}
	runCtx, cancel := context.WithCancel(context.Background())
	s.cancel = cancel
	go s.run(runCtx, source.NewBackoff(o.RetryMin, o.RetryMax))
	return s, nil
}

// Updated returns a channel that is closed at the next renewal (and at
// Close). Call it again after each wake-up to wait for the next one.
func (s *Source) Updated() <-chan struct{} { return s.notify.Updated() }

// GetX509SVID returns the current SVID. It implements x509svid.Source.
func (s *Source) GetX509SVID() (*x509svid.SVID, error) { return s.cur.GetX509SVID() }

// GetX509BundleForTrustDomain returns the bundle of the SVID's trust
// domain. It implements x509bundle.Source.
func (s *Source) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	return s.cur.GetX509BundleForTrustDomain(td)
}

// Close stops renewing, waits for the renewal goroutine and closes the CA
// connection. Later calls to the getters return identity.ErrClosed. Close is
// idempotent.
func (s *Source) Close() error {
	s.once.Do(func() {
		s.cancel()
		<-s.done
		_ = s.conn.Close()
		s.cur.Mu.Lock()
		s.cur.Closed = true
		s.cur.Mu.Unlock()
		s.notify.Close()
	})
	return nil
}

func (s *Source) run(ctx context.Context, retry *source.Backoff) {
	defer close(s.done)
	wait := s.untilRenewal()
	for {
		t := s.clock.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C():
		}
		callCtx, cancel := context.WithTimeout(ctx, csrCallTimeout)
		err := s.renew(callCtx)
		cancel()
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			wait = retry.Delay()
			s.cur.Mu.RLock()
			notAfter := s.cur.SVID.Certificates[0].NotAfter
			s.cur.Mu.RUnlock()
			s.logger.Warn("identity: renewing SVID failed; keeping current SVID", "spiffe_id", s.id.String(),
				"error", err, "retry_in", wait, "current_not_after", notAfter)
			continue
		}
		retry.Reset()
		wait = s.untilRenewal()
	}
}

// untilRenewal is the time left until half of the current SVID's lifetime.
func (s *Source) untilRenewal() time.Duration {
	s.cur.Mu.RLock()
	leaf := s.cur.SVID.Certificates[0]
	s.cur.Mu.RUnlock()
	return max(identity.RenewalTime(leaf).Sub(s.clock.Now()), 0)
}

// renew requests a new SVID and installs it.
func (s *Source) renew(ctx context.Context) error {
	svid, bundle, err := s.request(ctx)
	if err != nil {
		return fmt.Errorf("csr: %s from ca %s: %w", s.id, s.cfg.Addr, err)
	}
	if s.keyFile != "" {
		if err := writeKeyFile(s.keyFile, svid); err != nil {
			return fmt.Errorf("csr: %s: %w", s.id, err)
		}
	}
	s.cur.Mu.Lock()
	first := s.cur.SVID == nil
	s.cur.SVID, s.cur.Bundle = svid, bundle
	s.cur.Mu.Unlock()
	leaf := svid.Certificates[0]
	s.logger.Info("identity: CA issued SVID", "spiffe_id", svid.ID.String(), "serial", leaf.SerialNumber.String(),
		"not_after", leaf.NotAfter, "renew_at", identity.RenewalTime(leaf))
	if !first {
		s.notify.Notify()
	}
	return nil
}

// request sends one CSR and checks the CA's answer: the chain must be for
// our key and our SPIFFE ID, and verify against the roots.
func (s *Source) request(ctx context.Context) (*x509svid.SVID, *x509bundle.Bundle, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generating key: %w", err)
	}
	csrDER, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{
		URIs: []*url.URL{s.id.URL()},
	}, key)
	if err != nil {
		return nil, nil, fmt.Errorf("creating certificate request: %w", err)
	}
	token, err := s.cfg.Token(ctx)
	if err != nil {
		return nil, nil, fmt.Errorf("getting token: %w", err)
	}
	if token == "" {
		return nil, nil, errors.New("getting token: Token returned an empty token")
	}
	ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
	resp, err := s.client.CreateCertificate(ctx, &securitypb.IstioCertificateRequest{
		Csr:              string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csrDER})),
		ValidityDuration: int64(s.cfg.TTL / time.Second),
	})
	if err != nil {
		return nil, nil, fmt.Errorf("CreateCertificate: %w", err)
	}
	var chain []*x509.Certificate
	for i, entry := range resp.GetCertChain() {
		certs, err := source.ParseCertificates([]byte(entry))
		if err != nil {
			return nil, nil, fmt.Errorf("response cert_chain[%d]: %w", i, err)
		}
		chain = append(chain, certs...)
	}
	if len(chain) == 0 {
		return nil, nil, errors.New("response cert_chain is empty")
	}
	leaf := chain[0]
	if !key.PublicKey.Equal(leaf.PublicKey) {
		return nil, nil, errors.New("response cert_chain[0]: certificate is not for the requested key")
	}
	id, err := x509svid.IDFromCert(leaf)
	if err != nil {
		return nil, nil, fmt.Errorf("response cert_chain[0]: %w", err)
	}
	if id != s.id {
		return nil, nil, fmt.Errorf("response cert_chain[0]: issued for %s, not the requested %s", id, s.id)
	}
	// A self-signed root at the end is the trust anchor, not part of the
	// chain presented to peers.
	roots := s.roots
	if last := chain[len(chain)-1]; len(chain) > 1 && last.IsCA && bytes.Equal(last.RawIssuer, last.RawSubject) {
		chain = chain[:len(chain)-1]
		if roots == nil {
			roots = []*x509.Certificate{last}
		}
	}
	if roots == nil {
		return nil, nil, errors.New("response cert_chain has no root certificate and RootPEM is empty")
	}
	bundle := x509bundle.FromX509Authorities(s.id.TrustDomain(), roots)
	if _, _, err := x509svid.Verify(chain, bundle, x509svid.WithTime(s.clock.Now())); err != nil {
		return nil, nil, fmt.Errorf("response cert_chain does not verify against the trust bundle: %w", err)
	}
	return &x509svid.SVID{ID: id, Certificates: chain, PrivateKey: key}, bundle, nil
}

// writeKeyFile replaces path with the SVID's key, readable by the owner
// only from the moment it exists.
func writeKeyFile(path string, svid *x509svid.SVID) error {
	_, keyPEM, err := svid.Marshal()
	if err != nil {
		return fmt.Errorf("encoding private key: %w", err)
	}
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	tmp, err := os.CreateTemp(dir, "."+strings.TrimPrefix(base, ".")+".tmp*")
	if err != nil {
		return fmt.Errorf("writing key file %s: %w", path, err)
	}
	name := tmp.Name()
	defer os.Remove(name) // a no-op after the rename
	// CreateTemp makes the file 0600 already; Chmod guards odd umasks.
	werr := tmp.Chmod(0o600)
	if werr == nil {
		_, werr = tmp.Write(keyPEM)
	}
	if cerr := tmp.Close(); werr == nil {
		werr = cerr
	}
	if werr == nil {
		werr = os.Rename(name, path)
	}
	if werr != nil {
		return fmt.Errorf("writing key file %s: %w", path, werr)
	}
	return nil
}
