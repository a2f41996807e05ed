package csr_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	securitypb "istio.io/api/security/v1alpha1"

	"mesh/identity/csr"
	"mesh/identity/identitytest"
	"mesh/identity/internal/source"
	"mesh/identity/internal/sourcetest"
	"mesh/internal/testutil"
)

const serverID = "spiffe://example.org/ns/shop/sa/payments"

// certService is an IstioCertificateService for tests: it signs CSRs with
// an identitytest CA for callers whose bearer token it knows, and only for
// the identity bound to that token.
type certService struct {
	securitypb.UnimplementedIstioCertificateServiceServer
	ca *identitytest.CA

	mu       sync.Mutex
	tokens   map[string]string // bearer token -> SPIFFE ID it proves
	fail     error             // returned instead of a certificate
	mutate   func(*securitypb.IstioCertificateResponse)
	requests chan csrRequest
}

type csrRequest struct {
	token string
	req   *securitypb.IstioCertificateRequest
}

func newCertService(ca *identitytest.CA) *certService {
	return &certService{
		ca:       ca,
		tokens:   map[string]string{"payments-token": serverID},
		requests: make(chan csrRequest, 64),
	}
}

func (c *certService) set(fn func(c *certService)) {
	c.mu.Lock()
	defer c.mu.Unlock()
	fn(c)
}

func (c *certService) CreateCertificate(ctx context.Context, req *securitypb.IstioCertificateRequest) (*securitypb.IstioCertificateResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	var token string
	if v := md.Get("authorization"); len(v) == 1 {
		token, _ = strings.CutPrefix(v[0], "Bearer ")
	}
	select {
	case c.requests <- csrRequest{token: token, req: req}:
	default: // never block the server; tests read only the first few
	}
	c.mu.Lock()
	allowed, fail, mutate := c.tokens[token], c.fail, c.mutate
	c.mu.Unlock()
	if fail != nil {
		return nil, fail
	}
	if allowed == "" {
		return nil, status.Error(codes.Unauthenticated, "unknown bearer token")
	}
	block, _ := pem.Decode([]byte(req.GetCsr()))
	if block == nil {
		return nil, status.Error(codes.InvalidArgument, "csr is not PEM")
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil || len(csr.URIs) != 1 {
		return nil, status.Error(codes.InvalidArgument, "bad csr")
	}
	if csr.URIs[0].String() != allowed {
		return nil, status.Errorf(codes.PermissionDenied, "token proves %s, not %s", allowed, csr.URIs[0])
	}
	ttl := time.Duration(req.GetValidityDuration()) * time.Second
	if ttl == 0 {
		ttl = time.Hour
	}
	cert, err := c.ca.SignCSR([]byte(req.GetCsr()), ttl)
	if err != nil {
		return nil, status.Error(codes.InvalidArgument, err.Error())
	}
	resp := &securitypb.IstioCertificateResponse{CertChain: []string{
		string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Raw})),
		string(c.ca.RootPEM()),
	}}
	if mutate != nil {
		mutate(resp)
	}
	return resp, nil
}

// serveCertService serves svc on 127.0.0.1 until the test ends, with TLS
// if cfg is not nil, and returns its address.
func serveCertService(t *testing.T, svc *certService, cfg *tls.Config) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var opts []grpc.ServerOption
	if cfg != nil {
		opts = append(opts, grpc.Creds(credentials.NewTLS(cfg)))
	}
	srv := grpc.NewServer(opts...)
	securitypb.RegisterIstioCertificateServiceServer(srv, svc)
	testutil.Serve(t, srv, lis)
	return lis.Addr().String()
}

func csrConfig(addr string, ca *identitytest.CA) csr.Config {
	return csr.Config{
		Addr:           addr,
		Token:          func(context.Context) (string, error) { return "payments-token", nil },
		TrustDomain:    sourcetest.TD,
		Namespace:      "shop",
		ServiceAccount: "payments",
		TTL:            time.Hour,
		RootPEM:        ca.RootPEM(),
		Insecure:       true,
	}
}

func newCSRSource(t *testing.T, cfg csr.Config, opts ...csr.Option) *csr.Source {
	t.Helper()
	opts = append([]csr.Option{csr.WithLogger(slog.New(slog.DiscardHandler))}, opts...)
	src, err := csr.NewSource(testutil.Context(t), cfg, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = src.Close() })
	return src
}

// halfLife is when a certificate is half-way through its validity.
func halfLife(c *x509.Certificate) time.Time {
	return c.NotBefore.Add(c.NotAfter.Sub(c.NotBefore) / 2)
}

func nextTimer(ctx context.Context, t *testing.T, clk *source.FakeClock, what string) *source.FakeTimer {
	t.Helper()
	select {
	case tm := <-clk.Timers():
		return tm
	case <-ctx.Done():
		t.Fatalf("timed out waiting for the %s timer", what)
		return nil
	}
}

func nextRequest(ctx context.Context, t *testing.T, svc *certService) csrRequest {
	t.Helper()
	select {
	case r := <-svc.requests:
		return r
	case <-ctx.Done():
		t.Fatal("timed out waiting for a CSR")
		return csrRequest{}
	}
}

func TestCSRSourceIssuesAndRotatesAtHalfLife(t *testing.T) {
	ctx := testutil.Context(t)
	ca := sourcetest.NewCA(t, sourcetest.TD)
	svc := newCertService(ca)
	addr := serveCertService(t, svc, nil)
	clk := source.NewFakeClock(time.Now())
	src := newCSRSource(t, csrConfig(addr, ca), csr.WithClock(clk))

	req := nextRequest(ctx, t, svc)
	if req.token != "payments-token" {
		t.Errorf("bearer token = %q, want payments-token", req.token)
	}
	if got := req.req.GetValidityDuration(); got != 3600 {
		t.Errorf("validity_duration = %d, want 3600 (TTL 1h)", got)
	}
	first, err := src.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	if first.ID.String() != serverID {
		t.Fatalf("SVID ID = %s, want %s", first.ID, serverID)
	}
	key, ok := first.PrivateKey.(*ecdsa.PrivateKey)
	if !ok || key.Curve != elliptic.P256() {
		t.Fatalf("private key = %T, want ECDSA P-256", first.PrivateKey)
	}
	if len(first.Certificates) != 1 {
		t.Errorf("chain has %d certificates, want the leaf only (the root is the bundle)", len(first.Certificates))
	}
	if _, _, err := x509svid.Verify(first.Certificates, ca.Bundle()); err != nil {
		t.Fatalf("issued SVID does not verify: %v", err)
	}
	bundle, err := src.GetX509BundleForTrustDomain(ca.TrustDomain())
	if err != nil || !bundle.HasX509Authority(ca.Root()) {
		t.Fatalf("bundle = %v, %v; want the CA root", bundle, err)
	}
	if _, err := src.GetX509BundleForTrustDomain(spiffeid.RequireTrustDomainFromString("other.org")); err == nil {
		t.Error("got a bundle for a foreign trust domain")
	}

	for range 2 {
		current, _ := src.GetX509SVID()
		renewal := nextTimer(ctx, t, clk, "renewal")
		leaf := current.Certificates[0]
		if want := halfLife(leaf).Sub(clk.Now()); renewal.D != want {
			t.Fatalf("renewal in %v, want %v (half of %v..%v)", renewal.D, want, leaf.NotBefore, leaf.NotAfter)
		}
		updated := src.Updated()
		renewal.Fire()
		sourcetest.WaitClosed(ctx, t, updated, "renewal")
		next, err := src.GetX509SVID()
		if err != nil {
			t.Fatal(err)
		}
		if next.Certificates[0].SerialNumber.Cmp(leaf.SerialNumber) == 0 {
			t.Fatal("renewal kept the old certificate")
		}
		if next.PrivateKey.(*ecdsa.PrivateKey).Equal(current.PrivateKey) {
			t.Fatal("renewal reused the old private key")
		}
		nextRequest(ctx, t, svc)
	}
}

func TestCSRSourceRetriesFailedRenewal(t *testing.T) {
	ctx := testutil.Context(t)
	ca := sourcetest.NewCA(t, sourcetest.TD)
	svc := newCertService(ca)
	addr := serveCertService(t, svc, nil)
	clk := source.NewFakeClock(time.Now())
	warned := testutil.NewLogs(slog.LevelWarn)
	src := newCSRSource(t, csrConfig(addr, ca), csr.WithClock(clk),
		csr.WithLogger(slog.New(warned)), csr.WithRetryBackoff(time.Second, 8*time.Second))
	good := sourcetest.SerialOf(t, src)
	updated := src.Updated()

	svc.set(func(c *certService) { c.fail = status.Error(codes.Unavailable, "ca overloaded") })
	nextTimer(ctx, t, clk, "renewal").Fire()
	select {
	case r := <-warned.Records():
		if msg := sourcetest.RecordError(r); !strings.Contains(msg, "ca overloaded") || !strings.Contains(msg, serverID) {
			t.Fatalf("warning error = %q, want the CA's error and the SPIFFE ID", msg)
		}
	case <-ctx.Done():
		t.Fatal("timed out waiting for the failed renewal to be reported")
	}
	retry := nextTimer(ctx, t, clk, "retry")
	if retry.D != time.Second {
		t.Fatalf("retry in %v, want the backoff minimum 1s", retry.D)
	}
	retry.Fire()
	if retry = nextTimer(ctx, t, clk, "second retry"); retry.D != 2*time.Second {
		t.Fatalf("second retry in %v, want 2s", retry.D)
	}
	select {
	case <-updated:
		t.Fatal("Updated fired for a failed renewal")
	default:
	}
	if got := sourcetest.SerialOf(t, src); got.Cmp(good) != 0 {
		t.Fatalf("serial after failed renewal = %v, want the current %v", got, good)
	}

	svc.set(func(c *certService) { c.fail = nil })
	retry.Fire()
	sourcetest.WaitClosed(ctx, t, updated, "renewal after the CA recovered")
	if got := sourcetest.SerialOf(t, src); got.Cmp(good) == 0 {
		t.Fatal("serial unchanged after recovery")
	}
	svid, _ := src.GetX509SVID()
	if renewal := nextTimer(ctx, t, clk, "renewal after recovery"); renewal.D != halfLife(svid.Certificates[0]).Sub(clk.Now()) {
		t.Fatalf("after recovery, next renewal in %v, want half-life again", renewal.D)
	}
}

func TestCSRSourceRootFromResponseOverTLS(t *testing.T) {
	ca := sourcetest.NewCA(t, sourcetest.TD)
	svc := newCertService(ca)
	serving, err := ca.Issue("spiffe://example.org/ns/istio-system/sa/istiod", time.Hour, "istiod.example.org")
	if err != nil {
		t.Fatal(err)
	}
	addr := serveCertService(t, svc, &tls.Config{
		Certificates: []tls.Certificate{{Certificate: [][]byte{serving.Certificates[0].Raw}, PrivateKey: serving.PrivateKey}},
		MinVersion:   tls.VersionTLS12,
	})
	pool := x509.NewCertPool()
	pool.AddCert(ca.Root())
	cfg := csrConfig(addr, ca)
	cfg.Insecure = false
	cfg.RootPEM = nil // taken from the response's last certificate
	cfg.TLS = &tls.Config{RootCAs: pool, ServerName: "istiod.example.org", MinVersion: tls.VersionTLS12}
	src := newCSRSource(t, cfg)
	bundle, err := src.GetX509BundleForTrustDomain(ca.TrustDomain())
	if err != nil || !bundle.HasX509Authority(ca.Root()) {
		t.Fatalf("bundle = %v, %v; want the root from the response", bundle, err)
	}

	// A client that does not trust the CA's serving certificate never
	// sends its token.
	for len(svc.requests) > 0 {
		<-svc.requests
	}
	cfg.TLS = &tls.Config{RootCAs: x509.NewCertPool(), ServerName: "istiod.example.org", MinVersion: tls.VersionTLS12}
	ctx, cancel := context.WithTimeout(testutil.Context(t), 5*time.Second)
	defer cancel()
	if _, err := csr.NewSource(ctx, cfg, csr.WithLogger(slog.New(slog.DiscardHandler))); err == nil {
		t.Fatal("NewSource trusted a CA it has no root for")
	}
	if n := len(svc.requests); n != 0 {
		t.Fatalf("%d requests reached a server the client does not trust", n)
	}
}

func TestNewCSRSourceErrors(t *testing.T) {
	ca := sourcetest.NewCA(t, sourcetest.TD)
	stranger := sourcetest.NewCA(t, sourcetest.TD)
	svc := newCertService(ca)
	addr := serveCertService(t, svc, nil)
	base := csrConfig(addr, ca)

	configs := []struct {
		name string
		edit func(*csr.Config)
		want string
	}{
		{"no addr", func(c *csr.Config) { c.Addr = "" }, "Addr is required"},
		{"no token", func(c *csr.Config) { c.Token = nil }, "Token is required"},
		{"bad trust domain", func(c *csr.Config) { c.TrustDomain = "Bad Domain" }, `TrustDomain "Bad Domain"`},
		{"no namespace", func(c *csr.Config) { c.Namespace = "" }, "Namespace is required"},
		{"no service account", func(c *csr.Config) { c.ServiceAccount = "" }, "ServiceAccount is required"},
		{"bad service account", func(c *csr.Config) { c.ServiceAccount = "a/b" }, `ServiceAccount "a/b"`},
		{"negative ttl", func(c *csr.Config) { c.TTL = -time.Second }, "TTL -1s is negative"},
		{"sub-second ttl", func(c *csr.Config) { c.TTL = time.Millisecond }, "one-second granularity"},
		{"plaintext not asked for", func(c *csr.Config) { c.Insecure = false }, "set Insecure"},
		{"tls and insecure", func(c *csr.Config) { c.TLS = &tls.Config{} }, "both set"},
		{"bad root", func(c *csr.Config) { c.RootPEM = []byte("garbage") }, "RootPEM: no PEM certificate"},
	}
	for _, tt := range configs {
		t.Run(tt.name, func(t *testing.T) {
			cfg := base
			tt.edit(&cfg)
			if _, err := csr.NewSource(testutil.Context(t), cfg); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
		})
	}

	pemOf := func(c *x509.Certificate) string {
		return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw}))
	}
	other := sourcetest.Issue(t, ca, serverID)
	calls := []struct {
		name   string
		edit   func(*csr.Config)
		mutate func(*securitypb.IstioCertificateResponse)
		want   string
		code   codes.Code
	}{
		{"unknown token", func(c *csr.Config) {
			c.Token = func(context.Context) (string, error) { return "stolen", nil }
		}, nil, "unknown bearer token", codes.Unauthenticated},
		{"identity the token does not prove", func(c *csr.Config) { c.ServiceAccount = "admin" }, nil,
			"not spiffe://example.org/ns/shop/sa/admin", codes.PermissionDenied},
		{"token error", func(c *csr.Config) {
			c.Token = func(context.Context) (string, error) { return "", errors.New("token file missing") }
		}, nil, "getting token: token file missing", codes.Unknown},
		{"empty token", func(c *csr.Config) {
			c.Token = func(context.Context) (string, error) { return "", nil }
		}, nil, "empty token", codes.Unknown},
		{"empty chain", nil, func(r *securitypb.IstioCertificateResponse) { r.CertChain = nil }, "cert_chain is empty", codes.Unknown},
		{"garbage chain", nil, func(r *securitypb.IstioCertificateResponse) { r.CertChain[0] = "garbage" },
			"cert_chain[0]: no PEM certificate", codes.Unknown},
		{"certificate for another key", nil, func(r *securitypb.IstioCertificateResponse) { r.CertChain[0] = pemOf(other.Certificates[0]) },
			"not for the requested key", codes.Unknown},
		{"untrusted root", func(c *csr.Config) { c.RootPEM = stranger.RootPEM() }, nil,
			"does not verify against the trust bundle", codes.Unknown},
		{"no root anywhere", func(c *csr.Config) { c.RootPEM = nil },
			func(r *securitypb.IstioCertificateResponse) { r.CertChain = r.CertChain[:1] }, "no root certificate", codes.Unknown},
	}
	for _, tt := range calls {
		t.Run(tt.name, func(t *testing.T) {
			svc.set(func(c *certService) { c.mutate = tt.mutate })
			t.Cleanup(func() { svc.set(func(c *certService) { c.mutate = nil }) })
			cfg := base
			if tt.edit != nil {
				tt.edit(&cfg)
			}
			_, err := csr.NewSource(testutil.Context(t), cfg)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want %q", err, tt.want)
			}
			if !strings.Contains(err.Error(), addr) {
				t.Errorf("err = %v, want it to name the CA %s", err, addr)
			}
			if got := status.Code(err); got != tt.code {
				t.Errorf("status code = %v, want %v", got, tt.code)
			}
		})
	}
}

func TestCSRSourceWritesKeyFileOnlyWhenAsked(t *testing.T) {
	ctx := testutil.Context(t)
	ca := sourcetest.NewCA(t, sourcetest.TD)
	svc := newCertService(ca)
	addr := serveCertService(t, svc, nil)
	dir := t.TempDir()
	path := filepath.Join(dir, "key.pem")
	clk := source.NewFakeClock(time.Now())
	src := newCSRSource(t, csrConfig(addr, ca), csr.WithClock(clk), csr.WithKeyFile(path))

	checkKey := func() {
		t.Helper()
		info, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if mode := info.Mode().Perm(); mode != 0o600 {
			t.Fatalf("key file mode = %v, want 0600", mode)
		}
		data, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		block, _ := pem.Decode(data)
		if block == nil {
			t.Fatal("key file is not PEM")
		}
		key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		svid, _ := src.GetX509SVID()
		if !svid.PrivateKey.(*ecdsa.PrivateKey).Equal(key) {
			t.Fatal("key file does not hold the current SVID's key")
		}
	}
	checkKey()
	updated := src.Updated()
	nextTimer(ctx, t, clk, "renewal").Fire()
	sourcetest.WaitClosed(ctx, t, updated, "renewal")
	checkKey()
	entries, err := os.ReadDir(dir)
	if err != nil || len(entries) != 1 {
		t.Fatalf("dir holds %v (%v), want only key.pem", entries, err)
	}

	// Without the option nothing is written anywhere we can see.
	plainDir := t.TempDir()
	t.Chdir(plainDir)
	newCSRSource(t, csrConfig(addr, ca))
	if entries, _ := os.ReadDir(plainDir); len(entries) != 0 {
		t.Fatalf("source without WithKeyFile wrote %v", entries)
	}
}

func TestCSRSourceClose(t *testing.T) {
	ctx := testutil.Context(t)
	ca := sourcetest.NewCA(t, sourcetest.TD)
	addr := serveCertService(t, newCertService(ca), nil)
	clk := source.NewFakeClock(time.Now())
	src, err := csr.NewSource(ctx, csrConfig(addr, ca), csr.WithClock(clk),
		csr.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = src.Close() })
	renewal := nextTimer(ctx, t, clk, "renewal")
	updated := src.Updated()
	if err := src.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-csr.Done(src):
	default:
		t.Fatal("Close returned before the renewal goroutine exited")
	}
	if !renewal.Stopped() {
		t.Error("Close left the renewal timer running")
	}
	sourcetest.CheckClosed(t, src, ca.TrustDomain(), updated)
}
