package controlplane

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"log/slog"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	securitypb "istio.io/api/security/v1alpha1"

	"mesh/internal/testutil"
)

var paymentsWorkload = Workload{Name: "payments-v1", Namespace: "shop", ServiceAccount: "payments"}

func dialCA(t *testing.T, s *Server) securitypb.IstioCertificateServiceClient {
	t.Helper()
	conn, err := grpc.NewClient(s.Addr(), grpc.WithTransportCredentials(xdsTLS(t, s, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = conn.Close() })
	return securitypb.NewIstioCertificateServiceClient(conn)
}

func p256(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return key
}

func withToken(ctx context.Context, token string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
}

func TestCAServiceIssuesTheTokensIdentity(t *testing.T) {
	ctx := testutil.Context(t)
	logs := testutil.NewLogs(slog.LevelDebug)
	s := newTestServer(t, WithTrustDomain("example.org"), WithCertTTL(time.Hour), WithLogger(slog.New(logs)))
	token, err := s.WorkloadToken(paymentsWorkload)
	if err != nil {
		t.Fatal(err)
	}
	client := dialCA(t, s)
	key := p256(t)
	const want = "spiffe://example.org/ns/shop/sa/payments"

	for _, tt := range []struct {
		validity int64
		lifetime time.Duration // NotAfter-NotBefore: the TTL plus the minute of backdating
	}{
		{0, time.Hour + time.Minute},
		{600, 10*time.Minute + time.Minute},
		{7200, time.Hour + time.Minute}, // capped at the CA's TTL
	} {
		resp, err := client.CreateCertificate(withToken(ctx, token), &securitypb.IstioCertificateRequest{
			Csr: testutil.CSR(t, key, want), ValidityDuration: tt.validity,
		})
		if err != nil {
			t.Fatalf("validity %d: %v", tt.validity, err)
		}
		chain := resp.GetCertChain()
		if len(chain) != 2 || chain[1] != string(s.RootPEM()) {
			t.Fatalf("cert_chain has %d entries; want the leaf, then the root", len(chain))
		}
		leaf, err := parseCertPEM([]byte(chain[0]))
		if err != nil {
			t.Fatal(err)
		}
		if !key.PublicKey.Equal(leaf.PublicKey) {
			t.Fatal("leaf is not for the CSR's key")
		}
		root, err := parseCertPEM(s.RootPEM())
		if err != nil {
			t.Fatal(err)
		}
		id, _, err := x509svid.Verify([]*x509.Certificate{leaf},
			x509bundle.FromX509Authorities(spiffeid.RequireTrustDomainFromString("example.org"), []*x509.Certificate{root}))
		if err != nil {
			t.Fatalf("leaf does not verify as an SVID: %v", err)
		}
		if id.String() != want {
			t.Fatalf("leaf ID = %s, want %s", id, want)
		}
		if got := leaf.NotAfter.Sub(leaf.NotBefore); got != tt.lifetime {
			t.Errorf("validity %d: lifetime %v, want %v", tt.validity, got, tt.lifetime)
		}
	}
	logs.Await(ctx, t, "ca issued svid spiffe_id="+want)
	for {
		select {
		case r := <-logs.Records():
			if m := testutil.Format(r); strings.Contains(m, token) {
				t.Fatalf("token logged: %q", m)
			}
			continue
		default:
		}
		break
	}
}

func TestCAServiceRefusesWhatTheTokenDoesNotProve(t *testing.T) {
	ctx := testutil.Context(t)
	s := newTestServer(t, WithTrustDomain("example.org"))
	other := newTestServer(t, WithTrustDomain("example.org"))
	client := dialCA(t, s)
	token, err := s.WorkloadToken(paymentsWorkload)
	if err != nil {
		t.Fatal(err)
	}
	foreign, err := other.WorkloadToken(paymentsWorkload)
	if err != nil {
		t.Fatal(err)
	}
	admin, err := s.WorkloadToken(Workload{Name: "admin", Namespace: "shop", ServiceAccount: "admin"})
	if err != nil {
		t.Fatal(err)
	}
	// The payments token with the admin name spliced in keeps payments' MAC.
	parts := strings.Split(token, ".")
	parts[2] = strings.Split(admin, ".")[2]
	spliced := strings.Join(parts, ".")

	const payments = "spiffe://example.org/ns/shop/sa/payments"
	key := p256(t)
	weak, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		ctx      context.Context
		csr      string
		validity int64
		code     codes.Code
		want     string
	}{
		{"no token", ctx, testutil.CSR(t, key, payments), 0, codes.Unauthenticated, "missing authorization header"},
		{"basic auth", metadata.AppendToOutgoingContext(ctx, "authorization", "Basic dXNlcjpwdw=="), testutil.CSR(t, key, payments), 0,
			codes.Unauthenticated, `not "Bearer <token>"`},
		{"garbage token", withToken(ctx, "garbage"), testutil.CSR(t, key, payments), 0, codes.Unauthenticated, "malformed token"},
		{"token of another server", withToken(ctx, foreign), testutil.CSR(t, key, payments), 0, codes.Unauthenticated, "does not verify"},
		{"spliced token", withToken(ctx, spliced), testutil.CSR(t, key, "spiffe://example.org/ns/shop/sa/admin"), 0,
			codes.Unauthenticated, "does not verify"},
		{"other service account", withToken(ctx, token), testutil.CSR(t, key, "spiffe://example.org/ns/shop/sa/admin"), 0,
			codes.PermissionDenied, "token proves " + payments + "; csr asks for spiffe://example.org/ns/shop/sa/admin"},
		{"other namespace", withToken(ctx, token), testutil.CSR(t, key, "spiffe://example.org/ns/default/sa/payments"), 0,
			codes.PermissionDenied, "csr asks for spiffe://example.org/ns/default/sa/payments"},
		{"other trust domain", withToken(ctx, token), testutil.CSR(t, key, "spiffe://evil.org/ns/shop/sa/payments"), 0,
			codes.PermissionDenied, "csr asks for spiffe://evil.org/ns/shop/sa/payments"},
		{"no URI SAN", withToken(ctx, token), testutil.CSR(t, key), 0, codes.InvalidArgument, "has 0 URI SANs"},
		{"two URI SANs", withToken(ctx, token), testutil.CSR(t, key, payments, "spiffe://example.org/ns/shop/sa/admin"), 0,
			codes.InvalidArgument, "has 2 URI SANs"},
		{"not a SPIFFE ID", withToken(ctx, token), testutil.CSR(t, key, "https://example.org/x"), 0, codes.InvalidArgument, "URI SAN"},
		{"empty csr", withToken(ctx, token), "", 0, codes.InvalidArgument, "csr: empty"},
		{"not PEM", withToken(ctx, token), "garbage", 0, codes.InvalidArgument, "csr: no PEM block"},
		{"certificate instead of csr", withToken(ctx, token), string(s.RootPEM()), 0, codes.InvalidArgument, `"CERTIFICATE", not CERTIFICATE REQUEST`},
		{"weak rsa key", withToken(ctx, token), testutil.CSR(t, weak, payments), 0, codes.InvalidArgument, "rsa key of 1024 bits"},
		{"negative validity", withToken(ctx, token), testutil.CSR(t, key, payments), -5, codes.InvalidArgument, "validity_duration -5 is negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := client.CreateCertificate(tt.ctx, &securitypb.IstioCertificateRequest{Csr: tt.csr, ValidityDuration: tt.validity})
			if status.Code(err) != tt.code || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want %v containing %q", err, tt.code, tt.want)
			}
		})
	}
}

func TestWorkloadTokenValidatesWorkload(t *testing.T) {
	s := newTestServer(t)
	if _, err := s.WorkloadToken(Workload{Name: "x", ServiceAccount: "Bad_SA"}); err == nil || !strings.Contains(err.Error(), "service account") {
		t.Fatalf("err = %v, want a service account error", err)
	}
	a, err := s.WorkloadToken(Workload{Name: "a"})
	if err != nil {
		t.Fatal(err)
	}
	b, err := s.WorkloadToken(Workload{Name: "b", Namespace: "default", ServiceAccount: "default"})
	if err != nil {
		t.Fatal(err)
	}
	// The token binds the identity, not the workload's name: replicas share it.
	if a != b {
		t.Errorf("tokens for the same identity differ: %q vs %q", a, b)
	}
	c, err := s.WorkloadToken(Workload{Name: "a", ServiceAccount: "other"})
	if err != nil {
		t.Fatal(err)
	}
	if c == a {
		t.Error("tokens for different service accounts are equal")
	}
}

func TestServeCATLS(t *testing.T) {
	ctx := testutil.Context(t)
	s := newTestServer(t, WithTrustDomain("example.org"))
	addr, err := s.ServeCATLS(ctx, "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if addr == s.Addr() {
		t.Fatalf("TLS CA address %s is the xDS address", addr)
	}
	if _, err := s.ServeCATLS(ctx, "127.0.0.1:0"); err == nil || !strings.Contains(err.Error(), "already serving on "+addr) {
		t.Fatalf("second ServeCATLS: err = %v, want already serving", err)
	}
	token, err := s.WorkloadToken(paymentsWorkload)
	if err != nil {
		t.Fatal(err)
	}
	root, err := parseCertPEM(s.RootPEM())
	if err != nil {
		t.Fatal(err)
	}
	call := func(roots *x509.CertPool) error {
		conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{
			RootCAs: roots, ServerName: CAServerName, MinVersion: tls.VersionTLS12,
		})))
		if err != nil {
			return err
		}
		defer conn.Close()
		_, err = securitypb.NewIstioCertificateServiceClient(conn).CreateCertificate(withToken(ctx, token),
			&securitypb.IstioCertificateRequest{Csr: testutil.CSR(t, p256(t), "spiffe://example.org/ns/shop/sa/payments")})
		return err
	}
	trusted := x509.NewCertPool()
	trusted.AddCert(root)
	if err := call(trusted); err != nil {
		t.Fatalf("CreateCertificate over TLS: %v", err)
	}
	if err := call(x509.NewCertPool()); status.Code(err) != codes.Unavailable || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("client without the root: err = %v, want a certificate verification failure", err)
	}

	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ServeCATLS(ctx, "127.0.0.1:0"); !errors.Is(err, ErrClosed) {
		t.Fatalf("ServeCATLS after Close: err = %v, want ErrClosed", err)
	}
	// Close stopped the TLS listener too.
	if conn, err := net.Dial("tcp", addr); err == nil {
		conn.Close()
		t.Fatalf("TLS CA still accepting on %s after Close", addr)
	}
}

func TestCAServingCertificateRenewsAtHalfLife(t *testing.T) {
	s := newTestServer(t, WithCertTTL(time.Hour))
	c := s.certService
	first, err := c.servingCertificate(nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := first.Leaf.DNSNames; len(got) != 1 || got[0] != CAServerName {
		t.Fatalf("serving certificate DNS names = %v, want [%s]", got, CAServerName)
	}
	again, _ := c.servingCertificate(nil)
	if again != first {
		t.Fatal("serving certificate replaced before half-life")
	}
	// Nothing else uses the CA's clock in this test.
	halfLife := first.Leaf.NotBefore.Add(first.Leaf.NotAfter.Sub(first.Leaf.NotBefore) / 2)
	s.ca.now = func() time.Time { return halfLife }
	renewed, err := c.servingCertificate(nil)
	if err != nil {
		t.Fatal(err)
	}
	if renewed == first || renewed.Leaf.SerialNumber.Cmp(first.Leaf.SerialNumber) == 0 {
		t.Fatal("serving certificate not renewed at half-life")
	}
}
