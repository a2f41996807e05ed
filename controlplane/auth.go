package controlplane

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// How an xDS stream proves its workload, the way istiod authenticates
// istio-agent (a service-account token) and then the workload's own
// certificate:
//
//   - an enrollment token, written next to the bootstrap by WriteBootstrap
//     and sent as "authorization: Bearer" (gRPC bootstrap call_creds
//     jwt_token_file, gRFC A97). It is a JWT (HS256, keyed by the server's
//     token key) whose claims carry the whole enrollment: node id,
//     namespace, service account, name, service and port, labels, address;
//   - a WorkloadToken, which proves a namespace and service account only;
//   - the workload's SVID as TLS client certificate, which proves the same.
//
// The node's metadata is then a claim checked against that proof: a
// mismatch ends that stream with PermissionDenied naming the claim, and
// touches no other stream. Identity-only proofs take the rest of the
// enrollment (service, labels, address) from a workload declared by the
// operator (BootstrapJSON, WithWorkloads) under the node's WORKLOAD_NAME.

// enrollmentTokenTTL bounds an enrollment token's life: "exp" is required
// by gRFC A97 clients, which cache the token until shortly before it.
const enrollmentTokenTTL = 365 * 24 * time.Hour

// jwtHeader is the only header mesh issues and accepts: alg is fixed, so
// "none" or an asymmetric alg can never be chosen by a caller.
const jwtHeader = `{"alg":"HS256","typ":"JWT"}`

// enrollmentIssuer is the "iss" of enrollment tokens.
const enrollmentIssuer = "mesh-controlplane"

type enrollmentClaims struct {
	Issuer     string     `json:"iss"`
	Subject    string     `json:"sub"`
	IssuedAt   int64      `json:"iat"`
	Expiry     int64      `json:"exp"`
	Enrollment enrollment `json:"mesh_enrollment"`
}

// enrollment is what a workload was enrolled as.
type enrollment struct {
	Node           string            `json:"node"`
	Name           string            `json:"name"`
	Namespace      string            `json:"namespace"`
	ServiceAccount string            `json:"service_account"`
	Service        string            `json:"service,omitempty"`
	Port           uint32            `json:"port,omitempty"`
	Labels         map[string]string `json:"labels,omitempty"`
	Address        string            `json:"address,omitempty"`
}

func (e enrollment) workload() Workload {
	return Workload{Name: e.Name, Namespace: e.Namespace, ServiceAccount: e.ServiceAccount,
		Service: e.Service, Port: e.Port, Labels: e.Labels, Address: e.Address}
}

// jwtKey separates the enrollment tokens' key from the WorkloadToken MAC.
func (c *caService) jwtKey() []byte {
	h := hmac.New(sha256.New, c.tokenKey)
	h.Write([]byte("mesh enrollment jwt v1"))
	return h.Sum(nil)
}

func (c *caService) signJWT(signingInput string) []byte {
	h := hmac.New(sha256.New, c.jwtKey())
	h.Write([]byte(signingInput))
	return h.Sum(nil)
}

// mintEnrollment returns the enrollment token of w, whose bootstrap node
// id is nodeID.
func (c *caService) mintEnrollment(w Workload, nodeID string) (string, error) {
	now := c.ca.now()
	id, err := spiffeid.FromSegments(c.ca.trustDomain, "ns", w.Namespace, "sa", w.ServiceAccount)
	if err != nil {
		return "", fmt.Errorf("enrollment token: %w", err)
	}
	claims, err := json.Marshal(enrollmentClaims{
		Issuer: enrollmentIssuer, Subject: id.String(), IssuedAt: now.Unix(), Expiry: now.Add(enrollmentTokenTTL).Unix(),
		Enrollment: enrollment{Node: nodeID, Name: w.Name, Namespace: w.Namespace, ServiceAccount: w.ServiceAccount,
			Service: w.Service, Port: w.Port, Labels: w.Labels, Address: w.Address},
	})
	if err != nil {
		return "", fmt.Errorf("enrollment token: %w", err)
	}
	enc := base64.RawURLEncoding
	input := enc.EncodeToString([]byte(jwtHeader)) + "." + enc.EncodeToString(claims)
	return input + "." + enc.EncodeToString(c.signJWT(input)), nil
}

// verifyEnrollment returns the enrollment a token proves.
func (c *caService) verifyEnrollment(token string) (*enrollment, error) {
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return nil, errors.New("malformed token")
	}
	enc := base64.RawURLEncoding
	header, err1 := enc.DecodeString(parts[0])
	body, err2 := enc.DecodeString(parts[1])
	sig, err3 := enc.DecodeString(parts[2])
	if errors.Join(err1, err2, err3) != nil {
		return nil, errors.New("malformed token")
	}
	if string(header) != jwtHeader {
		return nil, errors.New("token header is not mesh's HS256 header")
	}
	if !hmac.Equal(sig, c.signJWT(parts[0]+"."+parts[1])) {
		return nil, errors.New("token signature does not verify")
	}
	var claims enrollmentClaims
	if err := json.Unmarshal(body, &claims); err != nil {
		return nil, fmt.Errorf("token claims: %w", err)
	}
	if claims.Issuer != enrollmentIssuer {
		return nil, fmt.Errorf("token issuer %q is not %q", claims.Issuer, enrollmentIssuer)
	}
	if !c.ca.now().Before(time.Unix(claims.Expiry, 0)) {
		return nil, fmt.Errorf("token expired at %s", time.Unix(claims.Expiry, 0).UTC().Format(time.RFC3339))
	}
	e := claims.Enrollment
	if err := e.workload().Validate(); err != nil {
		return nil, fmt.Errorf("token enrollment: %w", err)
	}
	id, err := spiffeid.FromSegments(c.ca.trustDomain, "ns", e.Namespace, "sa", e.ServiceAccount)
	if err != nil || id.String() != claims.Subject {
		return nil, fmt.Errorf("token subject %q does not match its enrollment", claims.Subject)
	}
	return &e, nil
}

// proof is what a stream's credentials proved.
type proof struct {
	namespace, serviceAccount string
	// enrollment is set by an enrollment token; nil when only the
	// identity was proven.
	enrollment *enrollment
	via        string // "token", "certificate" or both, for logs
}

func (p *proof) spiffeID(td spiffeid.TrustDomain) string {
	return "spiffe://" + td.Name() + "/ns/" + p.namespace + "/sa/" + p.serviceAccount
}

// streamProof authenticates the caller of an xDS stream from its bearer
// token and its TLS client certificate. Both, when present, must prove
// the same identity.
func (s *Server) streamProof(ctx context.Context) (*proof, error) {
	var fromToken *proof
	var tokenErr error
	if md, _ := metadata.FromIncomingContext(ctx); len(md.Get("authorization")) > 0 {
		token, err := bearerToken(ctx)
		if err == nil {
			fromToken, err = s.certService.proveToken(token)
		}
		tokenErr = err
	}
	fromCert, certErr := s.certificateProof(ctx)
	switch {
	case fromToken == nil && fromCert == nil:
		if err := errors.Join(tokenErr, certErr); err != nil {
			return nil, err
		}
		return nil, errors.New("no credential: send the workload's token (bootstrap call_creds jwt_token_file) or present its SVID as TLS client certificate")
	case tokenErr != nil:
		// A valid SVID proves the identity on its own; a token that no
		// longer verifies (one from before a restart that changed the
		// token key) adds nothing, and the enrollment then comes from
		// the operator's declaration, as for any certificate-only stream.
		return fromCert, nil
	case certErr != nil:
		return fromToken, nil
	case fromToken == nil:
		return fromCert, nil
	case fromCert == nil:
		return fromToken, nil
	case fromCert.namespace != fromToken.namespace || fromCert.serviceAccount != fromToken.serviceAccount:
		return nil, fmt.Errorf("token proves %s; client certificate proves %s",
			fromToken.spiffeID(s.trustDomain), fromCert.spiffeID(s.trustDomain))
	}
	fromToken.via = "token+certificate"
	return fromToken, nil
}

// proveToken accepts an enrollment token or a WorkloadToken.
func (c *caService) proveToken(token string) (*proof, error) {
	if strings.HasPrefix(token, tokenPrefix+".") {
		ns, sa, err := c.verify(token)
		if err != nil {
			return nil, err
		}
		return &proof{namespace: ns, serviceAccount: sa, via: "token"}, nil
	}
	e, err := c.verifyEnrollment(token)
	if err != nil {
		return nil, err
	}
	return &proof{namespace: e.Namespace, serviceAccount: e.ServiceAccount, enrollment: e, via: "token"}, nil
}

// certificateProof reads the identity of a verified TLS client
// certificate, if the caller presented one.
func (s *Server) certificateProof(ctx context.Context) (*proof, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return nil, nil
	}
	info, ok := p.AuthInfo.(credentials.TLSInfo)
	if !ok || len(info.State.PeerCertificates) == 0 {
		return nil, nil
	}
	// The handshake only asked for the certificate (RequestClientCert), so
	// that a workload whose certificate file expired still reaches us with
	// its token; verify it here.
	certs := info.State.PeerCertificates
	pool := x509.NewCertPool()
	pool.AddCert(s.ca.cert)
	inter := x509.NewCertPool()
	for _, c := range certs[1:] {
		inter.AddCert(c)
	}
	_, err := certs[0].Verify(x509.VerifyOptions{
		Roots: pool, Intermediates: inter, CurrentTime: s.ca.now(),
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	if err != nil {
		return nil, fmt.Errorf("client certificate: %w", err)
	}
	return svidProof(s.trustDomain, certs[0])
}

func svidProof(td spiffeid.TrustDomain, leaf *x509.Certificate) (*proof, error) {
	if len(leaf.URIs) != 1 {
		return nil, fmt.Errorf("client certificate: has %d URI SANs, want one SPIFFE ID", len(leaf.URIs))
	}
	id, err := spiffeid.FromURI(leaf.URIs[0])
	if err != nil {
		return nil, fmt.Errorf("client certificate: %w", err)
	}
	if id.TrustDomain() != td {
		return nil, fmt.Errorf("client certificate: %s is not in trust domain %s", id, td.Name())
	}
	seg := strings.Split(strings.TrimPrefix(id.Path(), "/"), "/")
	if len(seg) != 4 || seg[0] != "ns" || seg[2] != "sa" {
		return nil, fmt.Errorf("client certificate: %s is not spiffe://<td>/ns/<ns>/sa/<sa>", id)
	}
	return &proof{namespace: seg[1], serviceAccount: seg[3], via: "certificate"}, nil
}

// xdsServerTLS is the xDS port's TLS: the CA's serving certificate; a
// client certificate is asked for and verified per stream (see
// certificateProof).
func (s *Server) xdsServerTLS() *tls.Config {
	return &tls.Config{
		GetCertificate: s.certService.servingCertificate,
		ClientAuth:     tls.RequestClientCert,
		MinVersion:     tls.VersionTLS12,
	}
}

// servingNames are the names and addresses a client may dial the xDS
// port by: istiod's service name, and the listener's address (every
// loopback address when it listens on all).
func servingNames(addr net.Addr) (dns []string, ips []net.IP) {
	dns = []string{CAServerName}
	tcp, ok := addr.(*net.TCPAddr)
	if !ok {
		return dns, nil
	}
	if tcp.IP.IsUnspecified() {
		return dns, []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback}
	}
	return dns, []net.IP{tcp.IP}
}

// claimError is the PermissionDenied of a node claim its proof does not
// support.
func claimError(claim, format string, args ...any) error {
	return status.Errorf(codes.PermissionDenied, "node claim %s: %s", claim, fmt.Sprintf(format, args...))
}

// checkClaimsLocked checks n's metadata against p and returns the
// enrollment n is held to. The error names the first claim that fails.
func (s *Server) checkClaimsLocked(p *proof, n *nodeInfo) error {
	id := p.spiffeID(s.trustDomain)
	if n.namespace != p.namespace {
		return claimError(metaNamespace, "%q, but the credential proves %s", n.namespace, id)
	}
	if n.serviceAccount != p.serviceAccount {
		return claimError(metaServiceAccount, "%q, but the credential proves %s", n.serviceAccount, id)
	}
	var e Workload
	switch {
	case p.enrollment != nil:
		if n.id != p.enrollment.Node {
			return claimError("node.id", "%q, but the credential was issued for node %q", n.id, p.enrollment.Node)
		}
		e = p.enrollment.workload()
	default:
		// Identity only: the operator's declaration under this name, if
		// it is for the same identity, is the enrollment.
		d, ok := s.declared[n.namespace+"/"+n.workloadName]
		if ok && d.ServiceAccount == n.serviceAccount {
			e = d
		} else {
			e = Workload{Name: n.workloadName, Namespace: p.namespace, ServiceAccount: p.serviceAccount}
		}
	}
	if n.workloadName != "" && e.Name != "" && n.workloadName != e.Name {
		return claimError(metaWorkloadName, "%q, but the credential was issued for workload %q", n.workloadName, e.Name)
	}
	if n.serviceHost != "" && (n.serviceHost != e.host() || n.servicePort != e.Port) {
		claimed := net.JoinHostPort(n.serviceHost, strconv.FormatUint(uint64(n.servicePort), 10))
		if e.host() == "" {
			return claimError(metaService, "%q, but %s is enrolled for no service", claimed, id)
		}
		return claimError(metaService, "%q, but %s is enrolled for %s", claimed, id,
			net.JoinHostPort(e.host(), strconv.FormatUint(uint64(e.Port), 10)))
	}
	if !maps.Equal(n.labels, e.Labels) {
		return claimError(metaLabels, "%v, but the enrollment has %v", n.labels, e.Labels)
	}
	if n.address != "" && n.address != e.Address {
		return claimError(metaAddress, "%q, but the enrollment has %q", n.address, e.Address)
	}
	// Every stream of one node id shares its snapshot, secrets included,
	// so all must prove the same identity.
	for _, other := range s.streams {
		if other.id == n.id && other.proof != nil &&
			(other.proof.namespace != p.namespace || other.proof.serviceAccount != p.serviceAccount) {
			return claimError("node.id", "%q is connected with another identity", n.id)
		}
	}
	if d := s.departed[n.id]; d != nil && d.node.proof != nil &&
		(d.node.proof.namespace != p.namespace || d.node.proof.serviceAccount != p.serviceAccount) {
		return claimError("node.id", "%q belongs to another identity", n.id)
	}
	return nil
}

// logRefusalLocked logs a refused stream once per caller identity, node
// and reason, so a client retrying in a loop does not flood the log.
func (s *Server) logRefusalLocked(nodeID, identity string, err error, attrs ...any) {
	key := nodeID + "\x00" + identity + "\x00" + err.Error()
	if s.refusals[key] {
		return
	}
	if len(s.refusals) >= maxLoggedRefusals {
		clear(s.refusals)
	}
	s.refusals[key] = true
	s.logger.Warn("xds stream refused", append([]any{"node", nodeID, "identity", identity, "error", err}, attrs...)...)
}

// maxLoggedRefusals bounds the memory of refusals already logged.
const maxLoggedRefusals = 1024
