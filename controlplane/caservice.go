package controlplane

import (
	"context"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	securitypb "istio.io/api/security/v1alpha1"
)

// The embedded CA serves Istio's IstioCertificateService on the xDS port,
// so agentless workloads (package mesh/identity/csr) get their SVIDs from
// it the way istio-agent gets them from istiod.
//
// Callers authenticate with a bearer token from Server.WorkloadToken: an
// HMAC-SHA256 over the workload's namespace and service account, keyed by a
// random secret each Server draws at New. A token therefore proves exactly
// one identity, cannot be forged or edited without the secret, and is valid
// for the life of the Server that minted it (there is no expiry and no
// revocation short of a restart). The CA signs a CSR only for the SPIFFE ID
// spiffe://<trust domain>/ns/<namespace>/sa/<service account> its token
// proves. A validity_duration under the CA's certificate TTL shortens the
// certificate; a longer one is capped at the TTL.
//
// The xDS port serves TLS (unless WithPlaintextXDS), so the token is
// encrypted; ServeCATLS adds a second TLS listener for the CA alone.

// tokenPrefix versions the token format.
const tokenPrefix = "mesh1"

// maxCSRBytes bounds the CSR a caller may send; a real one is under 1 KiB.
const maxCSRBytes = 64 << 10

// CAServerName is the DNS name in the serving certificate of the TLS CA
// endpoint (ServeCATLS), istiod's service name: clients set it as their
// tls.Config.ServerName and trust RootPEM.
const CAServerName = "istiod.istio-system.svc"

type caService struct {
	securitypb.UnimplementedIstioCertificateServiceServer
	ca       *authority
	tokenKey []byte
	logger   *slog.Logger
	// servingDNS and servingIPs are the SANs of the serving certificate:
	// the names clients may dial the xDS port and ServeCATLS by.
	servingDNS []string
	servingIPs []net.IP

	mu        sync.Mutex
	tlsServer *grpc.Server // nil until ServeCATLS
	tlsAddr   string

	certMu     sync.Mutex
	serving    *tls.Certificate
	servingDue time.Time // when serving is replaced: half its lifetime
}

// newCAService makes the CA service, its tokens signed with key (from the
// state directory) or a new one, and its serving certificate naming what a
// client may dial lis by.
func (s *Server) newCAService(lis net.Addr, key []byte) {
	if key == nil {
		key = make([]byte, 32)
		_, _ = rand.Read(key) // crypto/rand.Read never fails; it crashes instead
	}
	dns, ips := servingNames(lis)
	s.certService = &caService{ca: s.ca, tokenKey: key, logger: s.logger, servingDNS: dns, servingIPs: ips}
}

// ServeCATLS serves the CA (IstioCertificateService) on a second listener at
// addr ("127.0.0.1:0" for a free loopback port) over TLS, as istiod does on
// port 15012, and returns its "ip:port". The bearer tokens workloads send
// are then encrypted, and the workload knows it talks to this CA: the
// serving certificate is issued by the embedded CA for CAServerName and
// renewed at half-life, so clients verify it with RootPEM. The xDS port
// stays as it is. Close stops the listener. It may be called once.
func (s *Server) ServeCATLS(ctx context.Context, addr string) (string, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return "", ErrClosed
	}
	c := s.certService
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.tlsServer != nil {
		return "", fmt.Errorf("ca tls listener: already serving on %s", c.tlsAddr)
	}
	if _, err := c.servingCertificate(nil); err != nil {
		return "", fmt.Errorf("ca tls listener: %w", err)
	}
	lis, err := (&net.ListenConfig{}).Listen(ctx, "tcp", addr)
	if err != nil {
		return "", fmt.Errorf("ca tls listener on %s: %w", addr, err)
	}
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{
		GetCertificate: c.servingCertificate,
		MinVersion:     tls.VersionTLS12,
	})))
	securitypb.RegisterIstioCertificateServiceServer(srv, c)
	c.tlsServer, c.tlsAddr = srv, lis.Addr().String()
	// Close sets closed under s.mu before waiting, so this Add cannot race
	// its Wait.
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := srv.Serve(lis); err != nil {
			s.logger.Error("ca tls server stopped", "error", err)
		}
	}()
	s.logger.Info("ca listening with tls", "address", c.tlsAddr, "server_name", CAServerName)
	return c.tlsAddr, nil
}

// stop ends the TLS listener, if any; Server.Close calls it.
func (c *caService) stop() {
	c.mu.Lock()
	srv := c.tlsServer
	c.mu.Unlock()
	if srv != nil {
		srv.Stop()
	}
}

// servingCertificate returns the TLS CA endpoint's certificate, issuing a
// new one when the current one is half-way through its life.
func (c *caService) servingCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	c.certMu.Lock()
	defer c.certMu.Unlock()
	if c.serving != nil && c.ca.now().Before(c.servingDue) {
		return c.serving, nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate serving key: %w", err)
	}
	id, err := spiffeid.FromSegments(c.ca.trustDomain, "ns", "istio-system", "sa", "istiod")
	if err != nil {
		return nil, fmt.Errorf("serving certificate id: %w", err)
	}
	_, leaf, err := c.ca.signPublicKey(id, &key.PublicKey, c.ca.ttl, c.servingDNS, c.servingIPs)
	if err != nil {
		return nil, err
	}
	c.serving = &tls.Certificate{Certificate: [][]byte{leaf.Raw}, PrivateKey: key, Leaf: leaf}
	c.servingDue = leaf.NotBefore.Add(leaf.NotAfter.Sub(leaf.NotBefore) / 2)
	return c.serving, nil
}

// WorkloadToken mints the bearer token with which w may ask this Server's
// CA (IstioCertificateService on Addr) for the SVID of its namespace and
// service account, and open xDS streams as that identity (the rest of the
// workload then comes from its declaration: BootstrapJSON, WithWorkloads).
// Only those two fields of w matter; the token is valid until the Server
// closes. Treat it as a secret.
func (s *Server) WorkloadToken(w Workload) (string, error) {
	if err := w.Validate(); err != nil {
		return "", err
	}
	w = w.withDefaults()
	return s.certService.mint(w.Namespace, w.ServiceAccount), nil
}

func (c *caService) mac(namespace, serviceAccount string) []byte {
	h := hmac.New(sha256.New, c.tokenKey)
	// NUL cannot occur in either name, so the pair is unambiguous.
	h.Write([]byte(tokenPrefix + "\x00" + namespace + "\x00" + serviceAccount))
	return h.Sum(nil)
}

func (c *caService) mint(namespace, serviceAccount string) string {
	enc := base64.RawURLEncoding
	return strings.Join([]string{
		tokenPrefix,
		enc.EncodeToString([]byte(namespace)),
		enc.EncodeToString([]byte(serviceAccount)),
		enc.EncodeToString(c.mac(namespace, serviceAccount)),
	}, ".")
}

// verify returns the identity a token proves.
func (c *caService) verify(token string) (namespace, serviceAccount string, err error) {
	parts := strings.Split(token, ".")
	if len(parts) != 4 || parts[0] != tokenPrefix {
		return "", "", errors.New("malformed token")
	}
	enc := base64.RawURLEncoding
	ns, err1 := enc.DecodeString(parts[1])
	sa, err2 := enc.DecodeString(parts[2])
	sum, err3 := enc.DecodeString(parts[3])
	if err := errors.Join(err1, err2, err3); err != nil {
		return "", "", errors.New("malformed token")
	}
	if !hmac.Equal(sum, c.mac(string(ns), string(sa))) {
		return "", "", errors.New("token signature does not verify")
	}
	return string(ns), string(sa), nil
}

// bearerToken returns the token of the request's authorization header.
func bearerToken(ctx context.Context) (string, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	values := md.Get("authorization")
	if len(values) == 0 {
		return "", errors.New("missing authorization header with a bearer token")
	}
	if len(values) > 1 {
		return "", errors.New("more than one authorization header")
	}
	scheme, token, ok := strings.Cut(values[0], " ")
	if !ok || !strings.EqualFold(scheme, "bearer") || strings.TrimSpace(token) == "" {
		return "", errors.New("authorization header is not \"Bearer <token>\"")
	}
	return strings.TrimSpace(token), nil
}

// CreateCertificate signs the CSR of a caller whose token proves the
// identity the CSR asks for.
func (c *caService) CreateCertificate(ctx context.Context, req *securitypb.IstioCertificateRequest) (*securitypb.IstioCertificateResponse, error) {
	token, err := bearerToken(ctx)
	if err != nil {
		return nil, status.Errorf(codes.Unauthenticated, "create certificate: %v", err)
	}
	namespace, serviceAccount, err := c.verify(token)
	if err != nil {
		return nil, status.Errorf(codes.Unauthenticated, "create certificate: %v", err)
	}
	proven, err := spiffeid.FromSegments(c.ca.trustDomain, "ns", namespace, "sa", serviceAccount)
	if err != nil {
		return nil, status.Errorf(codes.Unauthenticated, "create certificate: token identity: %v", err)
	}
	csr, err := parseCSR(req.GetCsr())
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "create certificate for %s: csr: %v", proven, err)
	}
	if len(csr.URIs) != 1 {
		return nil, status.Errorf(codes.InvalidArgument, "create certificate for %s: csr: has %d URI SANs, want exactly one SPIFFE ID", proven, len(csr.URIs))
	}
	asked, err := spiffeid.FromURI(csr.URIs[0])
	if err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "create certificate for %s: csr: URI SAN %q: %v", proven, csr.URIs[0], err)
	}
	if asked != proven {
		c.logger.Warn("ca refused a csr for an identity its token does not prove", "token_identity", proven.String(), "requested", asked.String())
		return nil, status.Errorf(codes.PermissionDenied, "create certificate: token proves %s; csr asks for %s", proven, asked)
	}
	ttl := c.ca.ttl
	switch v := req.GetValidityDuration(); {
	case v < 0:
		return nil, status.Errorf(codes.InvalidArgument, "create certificate for %s: validity_duration %d is negative", proven, v)
	case v > 0 && v < int64(c.ca.ttl/time.Second):
		ttl = time.Duration(v) * time.Second
	}
	leafPEM, leaf, err := c.ca.signPublicKey(proven, csr.PublicKey, ttl, nil, nil)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "create certificate for %s: %v", proven, err)
	}
	c.logger.Info("ca issued svid", "spiffe_id", proven.String(), "serial", leaf.SerialNumber.String(), "not_after", leaf.NotAfter)
	// Istio's order: the leaf first, the CA certificate (the trust anchor
	// workloads are given) last.
	return &securitypb.IstioCertificateResponse{CertChain: []string{string(leafPEM), string(c.ca.certPEM)}}, nil
}

// parseCSR decodes and checks a PEM certificate request: its signature must
// verify and its key must be one TLS peers accept.
func parseCSR(data string) (*x509.CertificateRequest, error) {
	if data == "" {
		return nil, errors.New("empty")
	}
	if len(data) > maxCSRBytes {
		return nil, fmt.Errorf("%d bytes, more than the %d allowed", len(data), maxCSRBytes)
	}
	block, _ := pem.Decode([]byte(data))
	if block == nil {
		return nil, errors.New("no PEM block")
	}
	if block.Type != "CERTIFICATE REQUEST" && block.Type != "NEW CERTIFICATE REQUEST" {
		return nil, fmt.Errorf("PEM block is %q, not CERTIFICATE REQUEST", block.Type)
	}
	csr, err := x509.ParseCertificateRequest(block.Bytes)
	if err != nil {
		return nil, err
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("signature: %w", err)
	}
	switch k := csr.PublicKey.(type) {
	case *ecdsa.PublicKey, ed25519.PublicKey:
	case *rsa.PublicKey:
		if k.N.BitLen() < 2048 {
			return nil, fmt.Errorf("rsa key of %d bits; at least 2048 required", k.N.BitLen())
		}
	default:
		return nil, fmt.Errorf("unsupported public key type %T", k)
	}
	return csr, nil
}

// signPublicKey issues a leaf SVID for id and pub, like issue does for a
// key it makes itself.
func (a *authority) signPublicKey(id spiffeid.ID, pub any, ttl time.Duration, dnsNames []string, ips []net.IP) ([]byte, *x509.Certificate, error) {
	serial, err := randomSerial()
	if err != nil {
		return nil, nil, err
	}
	now := a.now()
	notAfter := now.Add(ttl)
	if notAfter.After(a.cert.NotAfter) {
		notAfter = a.cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{a.trustDomain.Name()}},
		NotBefore:             now.Add(-time.Minute), // tolerate small clock skew
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
		URIs:                  []*url.URL{id.URL()},
		DNSNames:              dnsNames,
		IPAddresses:           ips,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, a.cert, pub, a.key)
	if err != nil {
		return nil, nil, fmt.Errorf("sign svid %s: %w", id, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, fmt.Errorf("parse svid %s: %w", id, err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), cert, nil
}

var _ securitypb.IstioCertificateServiceServer = (*caService)(nil)
