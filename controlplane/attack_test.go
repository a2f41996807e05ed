package controlplane

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	cluster "github.com/envoyproxy/go-control-plane/envoy/config/cluster/v3"
	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	endpointv3 "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	tlsv3 "github.com/envoyproxy/go-control-plane/envoy/extensions/transport_sockets/tls/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	jwtcreds "google.golang.org/grpc/credentials/jwt"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	"mesh/internal/testutil"
)

// The attacks of issue 9 on the control plane, each as an attacker would
// run it: a raw ADS stream on 127.0.0.1 with a node that claims what it
// likes. Against the control plane before workloads had to prove
// themselves, every one of these streams was answered.

const checkoutID = "sidecar~127.0.0.1~checkout-1.default~default.svc.cluster.local"

// rawNode is node metadata as an attacker writes it.
func rawNode(t *testing.T, id string, meta map[string]any) *core.Node {
	t.Helper()
	md, err := structpb.NewStruct(meta)
	if err != nil {
		t.Fatal(err)
	}
	return &core.Node{Id: id, Metadata: md}
}

// attack opens one ADS stream with opts, sends one request for names of
// typeURL as node, and returns the first response or the stream's error.
func attack(ctx context.Context, t *testing.T, s *Server, opts []grpc.DialOption, node *core.Node, typeURL string, names ...string) (*discovery.DiscoveryResponse, error) {
	t.Helper()
	conn, err := grpc.NewClient(s.Addr(), opts...)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := discovery.NewAggregatedDiscoveryServiceClient(conn).StreamAggregatedResources(ctx)
	if err != nil {
		return nil, err
	}
	// A refused stream may already be closed: the error is then Recv's.
	_ = stream.Send(&discovery.DiscoveryRequest{Node: node, TypeUrl: typeURL, ResourceNames: names})
	return stream.Recv()
}

// enrolledAs dials s with w's enrollment token, as w's bootstrap would.
func enrolledAs(t *testing.T, s *Server, w Workload) []grpc.DialOption {
	t.Helper()
	return xdsDialOptions(t, s, w.withDefaults(), nodeID(w.withDefaults()))
}

// svidOf is a TLS client certificate for ns/sa issued by s's CA.
func svidOf(t *testing.T, s *Server, ns, sa string) *tls.Certificate {
	t.Helper()
	chain, key, err := s.IssueSVID(ns, sa)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := tls.X509KeyPair(chain, key)
	if err != nil {
		t.Fatal(err)
	}
	return &cert
}

// secretIdentity is the SPIFFE ID of the "default" secret in r.
func secretIdentity(t *testing.T, r *discovery.DiscoveryResponse) string {
	t.Helper()
	for _, a := range r.GetResources() {
		var sec tlsv3.Secret
		if err := a.UnmarshalTo(&sec); err != nil || sec.GetName() != SecretDefault {
			continue
		}
		block, _ := pem.Decode(sec.GetTlsCertificate().GetCertificateChain().GetInlineBytes())
		if block == nil {
			t.Fatal("default secret holds no certificate")
		}
		leaf, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		return leaf.URIs[0].String()
	}
	return ""
}

func wantRefused(t *testing.T, resp *discovery.DiscoveryResponse, err error, code codes.Code, want string) {
	t.Helper()
	if resp != nil {
		t.Fatalf("stream answered with %d %s resources; want %v", len(resp.GetResources()), resp.GetTypeUrl(), code)
	}
	if status.Code(err) != code || !strings.Contains(err.Error(), want) {
		t.Fatalf("err = %v, want %v containing %q", err, code, want)
	}
}

// Impersonation: a stream that claims SERVICE_ACCOUNT=checkout asks SDS
// for "default", to get checkout's SVID and private key.
func TestAttackImpersonationOverRawADS(t *testing.T) {
	ctx := testutil.Context(t)
	rec := testutil.NewLogs(slog.LevelDebug)
	s := newTestServer(t, WithLogger(slog.New(rec)))
	other := newTestServer(t) // a control plane whose credentials mean nothing here

	// The real checkout, connected and holding its secret.
	victim := dialADS(t, s, testNode{id: checkoutID, namespace: "default", sa: "checkout"})
	victim.subscribe(resource.SecretType, SecretDefault, SecretRootCA)
	r := victim.await(ctx, resource.SecretType, has(SecretDefault))
	if got := secretIdentity(t, r); got != "spiffe://cluster.local/ns/default/sa/checkout" {
		t.Fatalf("checkout's own secret is for %s", got)
	}

	claimsCheckout := map[string]any{metaNamespace: "default", metaServiceAccount: "checkout", metaWorkloadName: "rogue-1"}
	rogue := Workload{Name: "rogue-1", ServiceAccount: "rogue"}
	rogueToken, err := s.WorkloadToken(rogue)
	if err != nil {
		t.Fatal(err)
	}
	foreignToken, err := other.certService.mintEnrollment(Workload{Name: "checkout-1", ServiceAccount: "checkout"}.withDefaults(), checkoutID)
	if err != nil {
		t.Fatal(err)
	}
	// An unsigned token ("alg": "none") claiming checkout's enrollment.
	parts := strings.Split(foreignToken, ".")
	unsigned := base64.RawURLEncoding.EncodeToString([]byte(`{"alg":"none","typ":"JWT"}`)) + "." + parts[1] + "."
	tlsOnly := []grpc.DialOption{grpc.WithTransportCredentials(xdsTLS(t, s, nil))}
	withToken := func(tok string) []grpc.DialOption {
		return append(slices.Clone(tlsOnly), grpc.WithPerRPCCredentials(bearer(tok)))
	}
	tests := []struct {
		name string
		opts []grpc.DialOption
		node *core.Node
		code codes.Code
		want string
	}{
		{"plaintext", []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())},
			rawNode(t, "rogue~1", claimsCheckout), codes.Unavailable, ""},
		{"no credential", tlsOnly, rawNode(t, "rogue~1", claimsCheckout), codes.Unauthenticated, "no credential"},
		{"another control plane's token", withToken(foreignToken), rawNode(t, checkoutID, claimsCheckout),
			codes.Unauthenticated, "does not verify"},
		{"unsigned token", withToken(unsigned), rawNode(t, checkoutID, claimsCheckout), codes.Unauthenticated, "header"},
		{"rogue's enrollment", enrolledAs(t, s, rogue), rawNode(t, nodeID(rogue.withDefaults()), claimsCheckout),
			codes.PermissionDenied, "node claim SERVICE_ACCOUNT"},
		{"rogue's identity token", withToken(rogueToken), rawNode(t, "rogue~1", claimsCheckout),
			codes.PermissionDenied, "node claim SERVICE_ACCOUNT"},
		{"rogue's svid", []grpc.DialOption{grpc.WithTransportCredentials(xdsTLS(t, s, svidOf(t, s, "default", "rogue")))},
			rawNode(t, "rogue~1", claimsCheckout), codes.PermissionDenied, "node claim SERVICE_ACCOUNT"},
		{"another CA's svid", []grpc.DialOption{grpc.WithTransportCredentials(xdsTLS(t, s, svidOf(t, other, "default", "checkout")))},
			rawNode(t, "rogue~1", claimsCheckout), codes.Unauthenticated, "client certificate"},
		// Honest claims, but checkout's node id: its snapshot, secrets
		// included, would be shared.
		{"checkout's node id", withToken(rogueToken),
			rawNode(t, checkoutID, map[string]any{metaNamespace: "default", metaServiceAccount: "rogue"}),
			codes.PermissionDenied, "node claim node.id"},
		{"checkout's node id, rogue's enrollment", enrolledAs(t, s, rogue),
			rawNode(t, checkoutID, map[string]any{metaNamespace: "default", metaServiceAccount: "rogue", metaWorkloadName: "rogue-1"}),
			codes.PermissionDenied, "node claim node.id"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := attack(ctx, t, s, tt.opts, tt.node, resource.SecretType, SecretDefault, SecretRootCA)
			wantRefused(t, resp, err, tt.code, tt.want)
		})
	}

	// Honest, the rogue gets its own identity and nothing else.
	resp, err := attack(ctx, t, s, enrolledAs(t, s, rogue),
		rawNode(t, nodeID(rogue.withDefaults()), map[string]any{metaNamespace: "default", metaServiceAccount: "rogue", metaWorkloadName: "rogue-1"}),
		resource.SecretType, SecretDefault, SecretRootCA)
	if err != nil {
		t.Fatal(err)
	}
	if got := secretIdentity(t, resp); got != "spiffe://cluster.local/ns/default/sa/rogue" {
		t.Fatalf("rogue's own stream got the secret of %s", got)
	}

	// The refusal named the claim in the log, and checkout was not
	// disturbed: its stream still gets pushes.
	rec.Await(ctx, t, "xds stream refused")
	if err := s.Apply([]byte(meshWidePeerAuth("STRICT"))); err != nil {
		t.Fatal(err)
	}
	victim.subscribe(resource.ListenerType, paymentsListener)
	victim.await(ctx, resource.ListenerType, func(*discovery.DiscoveryResponse) bool { return true })
}

// Rogue endpoint registration: a stream claims to serve payments, so that
// it is added to payments' endpoints and its identity to the SANs that
// payments' clients accept.
func TestAttackRogueEndpointRegistration(t *testing.T) {
	ctx := testutil.Context(t)
	s := newTestServer(t)
	payments := Workload{Name: "payments-v1", ServiceAccount: "payments", Service: "payments", Port: 8080,
		Labels: map[string]string{"app": "payments", "version": "v1"}, Address: "127.0.0.1:9001"}
	if _, err := s.BootstrapJSON(payments, t.TempDir()); err != nil {
		t.Fatal(err)
	}
	// The real payments, connected.
	real := dialADS(t, s, testNode{id: nodeID(payments.withDefaults()), namespace: "default", sa: "payments",
		service: paymentsListener, labels: payments.Labels, address: payments.Address})
	real.subscribe(resource.ListenerType, inboundName(payments.Address))
	real.await(ctx, resource.ListenerType, has(inboundName(payments.Address)))

	const rogueAddr = "127.0.0.1:9666"
	servesPayments := func(name, sa string) map[string]any {
		return map[string]any{metaNamespace: "default", metaServiceAccount: sa, metaWorkloadName: name,
			metaService: "payments:8080", metaAddress: rogueAddr, metaLabels: map[string]any{"app": "payments", "version": "v1"}}
	}
	rogue := Workload{Name: "rogue-1", ServiceAccount: "rogue"}
	rogueSvc := Workload{Name: "rogue-2", ServiceAccount: "rogue", Service: "rogue", Port: 8080}
	rogueToken, err := s.WorkloadToken(rogue)
	if err != nil {
		t.Fatal(err)
	}
	tlsOnly := []grpc.DialOption{grpc.WithTransportCredentials(xdsTLS(t, s, nil))}
	tests := []struct {
		name string
		opts []grpc.DialOption
		node *core.Node
		want string
	}{
		{"client-only enrollment", enrolledAs(t, s, rogue), rawNode(t, nodeID(rogue.withDefaults()), servesPayments("rogue-1", "rogue")),
			"node claim MESH_SERVICE"},
		{"enrolled for another service", enrolledAs(t, s, rogueSvc), rawNode(t, nodeID(rogueSvc.withDefaults()), servesPayments("rogue-2", "rogue")),
			"node claim MESH_SERVICE"},
		// payments-v1 is declared, but for sa/payments: the rogue's
		// identity does not make that declaration its enrollment.
		{"identity token, payments' workload name", append(slices.Clone(tlsOnly), grpc.WithPerRPCCredentials(bearer(rogueToken))),
			rawNode(t, "rogue~2", servesPayments("payments-v1", "rogue")), "node claim MESH_SERVICE"},
		{"svid, payments' workload name", []grpc.DialOption{grpc.WithTransportCredentials(xdsTLS(t, s, svidOf(t, s, "default", "rogue")))},
			rawNode(t, "rogue~3", servesPayments("payments-v1", "rogue")), "node claim MESH_SERVICE"},
		// Payments' own enrollment, but another address or other labels.
		{"payments enrollment, other address", enrolledAs(t, s, payments),
			rawNode(t, nodeID(payments.withDefaults()), servesPayments("payments-v1", "payments")), "node claim MESH_ADDRESS"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := attack(ctx, t, s, tt.opts, tt.node, resource.ListenerType, inboundName(rogueAddr))
			wantRefused(t, resp, err, codes.PermissionDenied, tt.want)
		})
	}

	// A client of payments sees payments' endpoint only, and accepts
	// payments' identity only.
	client := dialADS(t, s, clientNode())
	client.subscribe(resource.ClusterType)
	const paymentsCluster = "outbound|8080||" + paymentsHost
	r := client.await(ctx, resource.ClusterType, has(paymentsCluster))
	sans := clusterSANs(t, decode[*cluster.Cluster](t, r)[paymentsCluster])
	if want := []string{"spiffe://cluster.local/ns/default/sa/payments"}; !slices.Equal(sans, want) {
		t.Fatalf("payments' clients accept %v, want %v", sans, want)
	}
	client.subscribe(resource.EndpointType, paymentsCluster)
	r = client.await(ctx, resource.EndpointType, has(paymentsCluster))
	if got := endpointAddrs(decode[*endpointv3.ClusterLoadAssignment](t, r)[paymentsCluster]); !slices.Equal(got, []string{payments.Address}) {
		t.Fatalf("payments endpoints = %v, want only %s", got, payments.Address)
	}
}

// clusterSANs are the SANs a cluster's TLS accepts.
func clusterSANs(t *testing.T, c *cluster.Cluster) []string {
	t.Helper()
	ts := c.GetTransportSocket()
	if ts == nil {
		t.Fatalf("cluster %s has no TLS", c.GetName())
	}
	var up tlsv3.UpstreamTlsContext
	if err := ts.GetTypedConfig().UnmarshalTo(&up); err != nil {
		t.Fatal(err)
	}
	vc := up.GetCommonTlsContext().GetCombinedValidationContext().GetDefaultValidationContext()
	if vc == nil {
		vc = up.GetCommonTlsContext().GetValidationContext()
	}
	var out []string
	for _, m := range vc.GetMatchSubjectAltNames() {
		out = append(out, m.GetExact())
	}
	for _, m := range vc.GetMatchTypedSubjectAltNames() {
		out = append(out, m.GetMatcher().GetExact())
	}
	slices.Sort(out)
	return out
}

// A workload's SVID alone proves it; a token left over from before a
// restart that changed the token key does not block it.
func TestStreamProvenBySVID(t *testing.T) {
	ctx := testutil.Context(t)
	s := newTestServer(t)
	other := newTestServer(t)
	payments := Workload{Name: "payments-v1", ServiceAccount: "payments", Service: "payments", Port: 8080, Address: "127.0.0.1:9001"}
	if _, err := s.BootstrapJSON(payments, t.TempDir()); err != nil {
		t.Fatal(err)
	}
	stale, err := other.certService.mintEnrollment(payments.withDefaults(), nodeID(payments.withDefaults()))
	if err != nil {
		t.Fatal(err)
	}
	claims := map[string]any{metaNamespace: "default", metaServiceAccount: "payments", metaWorkloadName: "payments-v1",
		metaService: "payments:8080", metaAddress: payments.Address}
	svid := []grpc.DialOption{grpc.WithTransportCredentials(xdsTLS(t, s, svidOf(t, s, "default", "payments")))}
	for name, opts := range map[string][]grpc.DialOption{
		"svid":             svid,
		"svid+stale token": append(slices.Clone(svid), grpc.WithPerRPCCredentials(bearer(stale))),
	} {
		t.Run(name, func(t *testing.T) {
			resp, err := attack(ctx, t, s, opts, rawNode(t, nodeID(payments.withDefaults()), claims),
				resource.ListenerType, inboundName(payments.Address))
			if err != nil {
				t.Fatal(err)
			}
			if !has(inboundName(payments.Address))(resp) {
				t.Fatalf("no inbound listener in %v", resp)
			}
		})
	}
	// A token and a certificate that prove different identities are
	// refused, whichever is true.
	token, err := s.WorkloadToken(Workload{Name: "x", ServiceAccount: "checkout"})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := attack(ctx, t, s, append(slices.Clone(svid), grpc.WithPerRPCCredentials(bearer(token))),
		rawNode(t, nodeID(payments.withDefaults()), claims), resource.ListenerType, inboundName(payments.Address))
	wantRefused(t, resp, err, codes.Unauthenticated, "client certificate proves")
}

// The restart window: a control plane (re)started with its configuration
// answers the first request with it, never with an empty configuration.
func TestRestartServesConfiguredPolicyFromFirstResponse(t *testing.T) {
	ctx := testutil.Context(t)
	path := filepath.Join(t.TempDir(), "mesh.yaml")
	if err := os.WriteFile(path, []byte(meshWidePeerAuth("STRICT")), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, src := range []struct {
		name string
		opt  Option
	}{{"config file", WithConfigFile(path)}, {"in-code config", WithConfig([]byte(meshWidePeerAuth("STRICT")))}} {
		t.Run(src.name, func(t *testing.T) {
			first := newTestServer(t, src.opt)
			addr := first.Addr()
			der, err := x509.MarshalPKCS8PrivateKey(first.ca.key)
			if err != nil {
				t.Fatal(err)
			}
			ca, key := first.ca.certPEM, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
			first.Close()
			s := newTestServer(t, WithAddress(addr), WithCA(ca, key), src.opt)
			c := dialADS(t, s, paymentsNode("payments-v1", "", "v1"))
			c.subscribe(resource.ListenerType, inboundName("127.0.0.1:9001"))
			r := c.await(ctx, resource.ListenerType, func(*discovery.DiscoveryResponse) bool { return true })
			l := decode[*listener.Listener](t, r)[inboundName("127.0.0.1:9001")]
			for _, fc := range l.GetFilterChains() {
				if fc.GetTransportSocket() == nil {
					t.Fatalf("first response after restart has plaintext chain %q", fc.GetName())
				}
			}
		})
	}
}

// New with a config file holding one invalid object fails and serves
// nothing, rather than serving the empty configuration.
func TestNewWithInvalidConfigFileFailsClosed(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	lis.Close()
	path := filepath.Join(t.TempDir(), "mesh.yaml")
	bad := meshWidePeerAuth("STRICT") + `---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: broken}
spec:
  hosts: [payments]
  http:
  - route:
    - destination: {host: payments}
      weight: -5
`
	if err := os.WriteFile(path, []byte(bad), 0o644); err != nil {
		t.Fatal(err)
	}
	_, err = New(testutil.Context(t), WithAddress(addr), WithConfigFile(path))
	if err == nil || !strings.Contains(err.Error(), "VirtualService default/broken") || !strings.Contains(err.Error(), "weight") {
		t.Fatalf("New = %v, want the invalid object named", err)
	}
	if _, err := New(testutil.Context(t), WithAddress(addr), WithConfig([]byte(bad))); err == nil {
		t.Fatal("New accepted invalid in-code config")
	}
	// Nothing was left listening.
	conn, err := net.Dial("tcp", addr)
	if err == nil {
		conn.Close()
		t.Fatalf("something still listens on %s", addr)
	}
}

func meshWidePeerAuth(mode string) string {
	return "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: istio-system}\nspec: {mtls: {mode: " + mode + "}}\n"
}

// The enrollment token is a JWT that grpc-go's own gRFC A97 call
// credentials (credentials/jwt, which needs "exp") read from the file
// WriteBootstrap writes and send as the stream's bearer token.
func TestEnrollmentTokenWithGRPCJWTCallCreds(t *testing.T) {
	ctx := testutil.Context(t)
	s := newTestServer(t)
	w := Workload{Name: "payments-v1", ServiceAccount: "payments", Service: "payments", Port: 8080, Address: "127.0.0.1:9001"}
	dir := t.TempDir()
	if _, err := s.WriteBootstrap(dir, w); err != nil {
		t.Fatal(err)
	}
	creds, err := jwtcreds.NewTokenFileCallCredentials(filepath.Join(dir, TokenFile))
	if err != nil {
		t.Fatal(err)
	}
	opts := []grpc.DialOption{grpc.WithTransportCredentials(xdsTLS(t, s, nil)), grpc.WithPerRPCCredentials(creds)}
	claims := map[string]any{metaNamespace: "default", metaServiceAccount: "payments", metaWorkloadName: "payments-v1",
		metaService: "payments:8080", metaAddress: w.Address}
	resp, err := attack(ctx, t, s, opts, rawNode(t, nodeID(w.withDefaults()), claims), resource.ListenerType, inboundName(w.Address))
	if err != nil {
		t.Fatal(err)
	}
	if !has(inboundName(w.Address))(resp) {
		t.Fatalf("no inbound listener in %v", resp)
	}
}

// WithPlaintextXDS is the explicit, logged opt-out: plaintext bootstraps
// with no credential, and streams served on their claims.
func TestPlaintextXDSIsExplicitAndLogged(t *testing.T) {
	ctx := testutil.Context(t)
	rec := testutil.NewLogs(slog.LevelDebug)
	s := newTestServer(t, WithPlaintextXDS(), WithLogger(slog.New(rec)))
	rec.Await(ctx, t, "INSECURE")
	dir := t.TempDir()
	path, err := s.WriteBootstrap(dir, Workload{Name: "checkout-1", ServiceAccount: "checkout"})
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(data), `"type": "insecure"`) || strings.Contains(string(data), "call_creds") {
		t.Fatalf("plaintext bootstrap:\n%s", data)
	}
	if _, err := os.Stat(filepath.Join(dir, TokenFile)); !os.IsNotExist(err) {
		t.Fatalf("token file written for a plaintext control plane: %v", err)
	}
	resp, err := attack(ctx, t, s, []grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())},
		rawNode(t, checkoutID, map[string]any{metaServiceAccount: "checkout"}), resource.SecretType, SecretDefault)
	if err != nil || secretIdentity(t, resp) != "spiffe://cluster.local/ns/default/sa/checkout" {
		t.Fatalf("plaintext stream: %v, %v", resp, err)
	}
}
