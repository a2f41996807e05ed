package identity_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"log/slog"
	"math/big"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"mesh/identity"
	"mesh/identity/identitytest"
	"mesh/identity/internal/sourcetest"
	"mesh/internal/testutil"
)

const (
	testTD   = "example.org"
	clientID = "spiffe://example.org/ns/default/sa/client"
	serverID = "spiffe://example.org/ns/shop/sa/payments"
)

// pollInterval is tiny so reloads happen quickly; tests wait on signals,
// never on durations.
const pollInterval = 2 * time.Millisecond

func writeFiles(t *testing.T, ca *identitytest.CA, dir string, svid *x509svid.SVID) identity.FileConfig {
	t.Helper()
	cfg, err := ca.WriteFiles(dir, svid)
	if err != nil {
		t.Fatal(err)
	}
	cfg.RefreshInterval = pollInterval
	return cfg
}

func newFileSource(t *testing.T, cfg identity.FileConfig, opts ...identity.Option) *identity.FileSource {
	t.Helper()
	opts = append([]identity.Option{identity.WithLogger(slog.New(slog.DiscardHandler))}, opts...)
	src, err := identity.NewFileSource(testutil.Context(t), cfg, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = src.Close() })
	return src
}

func TestFileConfigValidate(t *testing.T) {
	full := identity.FileConfig{CertFile: "c", KeyFile: "k", CAFile: "ca"}
	tests := []struct {
		name string
		edit func(*identity.FileConfig)
		want string
	}{
		{"ok", func(*identity.FileConfig) {}, ""},
		{"no cert", func(c *identity.FileConfig) { c.CertFile = "" }, "CertFile is required"},
		{"no key", func(c *identity.FileConfig) { c.KeyFile = "" }, "KeyFile is required"},
		{"no ca", func(c *identity.FileConfig) { c.CAFile = "" }, "CAFile is required"},
		{"negative interval", func(c *identity.FileConfig) { c.RefreshInterval = -time.Second }, "RefreshInterval -1s is negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := full
			tt.edit(&cfg)
			err := cfg.Validate()
			if tt.want == "" {
				if err != nil {
					t.Fatalf("Validate() = %v, want nil", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Validate() = %v, want error containing %q", err, tt.want)
			}
		})
	}
}

func TestFileSourceLoads(t *testing.T) {
	ca := sourcetest.NewCA(t, testTD)
	svid := sourcetest.Issue(t, ca, clientID)
	src := newFileSource(t, writeFiles(t, ca, t.TempDir(), svid))

	got, err := src.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	if got.ID.String() != clientID {
		t.Errorf("SVID ID = %s, want %s", got.ID, clientID)
	}
	if got.Certificates[0].SerialNumber.Cmp(svid.Certificates[0].SerialNumber) != 0 {
		t.Errorf("loaded serial %v, want %v", got.Certificates[0].SerialNumber, svid.Certificates[0].SerialNumber)
	}
	bundle, err := src.GetX509BundleForTrustDomain(ca.TrustDomain())
	if err != nil {
		t.Fatal(err)
	}
	if !bundle.HasX509Authority(ca.Root()) {
		t.Error("bundle lacks the CA root")
	}
	_, err = src.GetX509BundleForTrustDomain(spiffeid.RequireTrustDomainFromString("other.org"))
	if err == nil || !strings.Contains(err.Error(), `no bundle for trust domain "other.org"`) {
		t.Errorf("foreign trust domain: err = %v, want no bundle for trust domain", err)
	}
}

func TestFileSourceAcceptsSEC1AndPKCS1Keys(t *testing.T) {
	ca := sourcetest.NewCA(t, testTD)
	svid := sourcetest.Issue(t, ca, clientID)
	cfg := writeFiles(t, ca, t.TempDir(), svid)
	der, err := x509.MarshalECPrivateKey(svid.PrivateKey.(*ecdsa.PrivateKey))
	if err != nil {
		t.Fatal(err)
	}
	sec1 := pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})
	if err := identitytest.WriteFileAtomic(cfg.KeyFile, sec1); err != nil {
		t.Fatal(err)
	}
	src := newFileSource(t, cfg)
	if got := sourcetest.SerialOf(t, src); got.Cmp(svid.Certificates[0].SerialNumber) != 0 {
		t.Errorf("serial = %v, want %v", got, svid.Certificates[0].SerialNumber)
	}
}

func TestNewFileSourceErrors(t *testing.T) {
	ca := sourcetest.NewCA(t, testTD)
	otherCA := sourcetest.NewCA(t, testTD)
	svid := sourcetest.Issue(t, ca, clientID)
	other := sourcetest.Issue(t, ca, "spiffe://example.org/ns/default/sa/other")

	noSPIFFE := selfSigned(t)
	tests := []struct {
		name  string
		setup func(cfg identity.FileConfig)
		want  string
	}{
		{"missing key file", func(cfg identity.FileConfig) { _ = os.Remove(cfg.KeyFile) }, "key.pem: no such file"},
		{"key is not PEM", func(cfg identity.FileConfig) { write(t, cfg.KeyFile, []byte("garbage")) }, "key.pem: no PEM private key"},
		{"cert is not PEM", func(cfg identity.FileConfig) { write(t, cfg.CertFile, []byte("garbage")) }, "cert-chain.pem: no PEM certificate"},
		{"ca is not PEM", func(cfg identity.FileConfig) { write(t, cfg.CAFile, nil) }, "root-cert.pem: no PEM certificate"},
		{"no SPIFFE ID", func(cfg identity.FileConfig) { write(t, cfg.CertFile, noSPIFFE) }, "cert-chain.pem: certificate has no SPIFFE ID URI SAN"},
		{"key of another SVID", func(cfg identity.FileConfig) {
			_, keyPEM, err := other.Marshal()
			if err != nil {
				t.Fatal(err)
			}
			write(t, cfg.KeyFile, keyPEM)
		}, "key.pem: key does not match certificate"},
		{"foreign root", func(cfg identity.FileConfig) {
			write(t, cfg.CAFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: otherCA.Root().Raw}))
		}, "does not verify against"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := writeFiles(t, ca, t.TempDir(), svid)
			tt.setup(cfg)
			src, err := identity.NewFileSource(testutil.Context(t), cfg)
			if err == nil {
				_ = src.Close()
				t.Fatalf("NewFileSource succeeded, want error containing %q", tt.want)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("NewFileSource error = %q, want it to contain %q", err, tt.want)
			}
		})
	}

	t.Run("invalid config", func(t *testing.T) {
		_, err := identity.NewFileSource(testutil.Context(t), identity.FileConfig{CertFile: "c"})
		if err == nil || !strings.Contains(err.Error(), "KeyFile is required") {
			t.Fatalf("err = %v, want KeyFile is required", err)
		}
	})
	t.Run("canceled context", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		cfg := writeFiles(t, ca, t.TempDir(), svid)
		if _, err := identity.NewFileSource(ctx, cfg); !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v, want context.Canceled", err)
		}
	})
}

func TestFileSourceReloadsChangedFiles(t *testing.T) {
	ctx := testutil.Context(t)
	ca := sourcetest.NewCA(t, testTD)
	dir := t.TempDir()
	first := sourcetest.Issue(t, ca, clientID)
	src := newFileSource(t, writeFiles(t, ca, dir, first))

	for range 2 { // twice: the channel is replaced after each reload
		updated := src.Updated()
		next := sourcetest.Issue(t, ca, clientID)
		writeFiles(t, ca, dir, next)
		sourcetest.WaitClosed(ctx, t, updated, "reload")
		if got, want := sourcetest.SerialOf(t, src), next.Certificates[0].SerialNumber; got.Cmp(want) != 0 {
			t.Fatalf("after reload serial = %v, want %v", got, want)
		}
	}
}

func TestFileSourceKeepsLastGoodOnBadReplacement(t *testing.T) {
	ctx := testutil.Context(t)
	ca := sourcetest.NewCA(t, testTD)
	dir := t.TempDir()
	good := sourcetest.Issue(t, ca, clientID)
	warned := testutil.NewLogs(slog.LevelWarn)
	src := newFileSource(t, writeFiles(t, ca, dir, good), identity.WithLogger(slog.New(warned)))
	updated := src.Updated()

	cfg := writeFiles(t, ca, dir, good)
	write(t, cfg.KeyFile, []byte("-----BEGIN NOTHING-----\n-----END NOTHING-----\n"))
	select {
	case r := <-warned.Records():
		if msg := sourcetest.RecordError(r); !strings.Contains(msg, "key.pem: no PEM private key") {
			t.Fatalf("warning error = %q, want it to name key.pem", msg)
		}
	case <-ctx.Done():
		t.Fatal("timed out waiting for the bad set to be reported")
	}
	select {
	case <-updated:
		t.Fatal("Updated fired for a bad set")
	default:
	}
	if got := sourcetest.SerialOf(t, src); got.Cmp(good.Certificates[0].SerialNumber) != 0 {
		t.Fatalf("serial after bad set = %v, want the last good %v", got, good.Certificates[0].SerialNumber)
	}

	// The poller lives on: a good set is picked up.
	next := sourcetest.Issue(t, ca, clientID)
	writeFiles(t, ca, dir, next)
	sourcetest.WaitClosed(ctx, t, updated, "reload after recovery")
	if got := sourcetest.SerialOf(t, src); got.Cmp(next.Certificates[0].SerialNumber) != 0 {
		t.Fatalf("serial after recovery = %v, want %v", got, next.Certificates[0].SerialNumber)
	}
}

func TestFileSourceCloseStopsPoller(t *testing.T) {
	ca := sourcetest.NewCA(t, testTD)
	src, err := identity.NewFileSource(testutil.Context(t), writeFiles(t, ca, t.TempDir(), sourcetest.Issue(t, ca, clientID)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = src.Close() })
	done := identity.PollerDone(src)
	select {
	case <-done:
		t.Fatal("poller exited before Close")
	default:
	}
	updated := src.Updated()
	if err := src.Close(); err != nil {
		t.Fatal(err)
	}
	// Close waits for the poller, so it has exited now, not eventually.
	select {
	case <-done:
	default:
		t.Fatal("Close returned before the poller exited")
	}
	sourcetest.CheckClosed(t, src, ca.TrustDomain(), updated)
}

// TestMain fails the binary if any source, server or connection a test
// started outlives it: every Close must stop and wait for its goroutines.
func write(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := identitytest.WriteFileAtomic(path, data); err != nil {
		t.Fatal(err)
	}
}

// selfSigned returns a PEM leaf certificate without any URI SAN.
func selfSigned(t *testing.T) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(7),
		DNSNames:     []string{"payments.example.org"},
		NotBefore:    time.Now().Add(-time.Minute),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// TestFileSourceWatchesItsFiles: with the fallback interval a day away, a
// new SVID from a new CA written over the files (a control plane that
// restarted with another CA) is picked up by watching them.
func TestFileSourceWatchesItsFiles(t *testing.T) {
	ctx := testutil.Context(t)
	ca := sourcetest.NewCA(t, testTD)
	dir := t.TempDir()
	cfg := writeFiles(t, ca, dir, sourcetest.Issue(t, ca, clientID))
	cfg.RefreshInterval = 24 * time.Hour
	src := newFileSource(t, cfg)

	updated := src.Updated()
	other := sourcetest.NewCA(t, testTD)
	next := sourcetest.Issue(t, other, clientID)
	writeFiles(t, other, dir, next)
	sourcetest.WaitClosed(ctx, t, updated, "the rewritten files to be picked up")
	if got, want := sourcetest.SerialOf(t, src), next.Certificates[0].SerialNumber; got.Cmp(want) != 0 {
		t.Fatalf("after the rewrite serial = %v, want %v", got, want)
	}
}
