// Package controlplane is mesh's embedded control plane: an istiod-like xDS
// server for proxyless gRPC workloads, with a CA that issues SPIFFE SVIDs,
// usable on one machine and as a test helper the way net/http/httptest is.
//
//	cp, err := controlplane.New(ctx) // ADS over TLS on 127.0.0.1:<free port>
//	if err != nil { ... }
//	defer cp.Close()
//
//	// Tell it about a workload and get the files istio-agent would write.
//	bootstrap, err := cp.WriteBootstrap(dir, controlplane.Workload{
//		Name: "payments-v1", Service: "payments", Port: 8080,
//		Labels: map[string]string{"version": "v1"},
//	})
//	os.Setenv("GRPC_XDS_BOOTSTRAP", bootstrap)
//
//	// Route with Istio YAML.
//	err = cp.Apply([]byte(`
//	apiVersion: networking.istio.io/v1
//	kind: VirtualService
//	metadata: {name: payments}
//	spec:
//	  hosts: [payments]
//	  http:
//	  - route:
//	    - destination: {host: payments}
//	`))
//
// # What it serves
//
// The output follows istiod's proxyless generator: a client listener and
// route configuration named "<host>:<port>" per service port (short names
// such as "payments:8080" are answered too), clusters
// "outbound|<port>|<subset>|<host>" fed by EDS, and for every
// "xds.istio.io/grpc/lds/inbound/<ip>:<port>" a workload asks for, its
// server-side listener with mTLS per PeerAuthentication (PERMISSIVE as two
// filter chains told apart by the client's first bytes: "tls" with mTLS,
// "raw_buffer" in plaintext) and RBAC HTTP filters per AuthorizationPolicy
// (AUDIT, then DENY, then ALLOW; gRFC A41).
//
// Services come from workloads declared through their bootstraps, from
// connected workloads (node metadata MESH_SERVICE, and MESH_ADDRESS or the
// inbound listener they ask for, which gives their endpoint) and from
// ServiceEntry/WorkloadEntry objects. A workload's endpoint disappears when
// its ADS stream closes.
//
// Configuration (VirtualService, DestinationRule, PeerAuthentication,
// AuthorizationPolicy, ServiceEntry, WorkloadEntry) is validated as a whole; a bad object is
// rejected with an error naming it and the field path, and nothing changes.
//
// # Trust
//
// xDS and the CA are served over TLS (the analogue of istiod's port
// 15012), with a certificate from the CA for 127.0.0.1 (the listener's
// address) and CAServerName, verified with RootPEM. Every ADS stream must
// prove its workload: with the enrollment token WriteBootstrap writes
// (gRPC bootstrap call_creds jwt_token_file, gRFC A97; the role a
// Kubernetes service-account token plays for istiod), with a
// WorkloadToken, or with its SVID as TLS client certificate. Node metadata
// is only a claim: NAMESPACE, SERVICE_ACCOUNT, WORKLOAD_NAME, MESH_SERVICE,
// LABELS, MESH_ADDRESS and the node id must match the enrollment the
// credential proves (for a token or SVID proving only an identity, the
// workload as declared by BootstrapJSON or WithWorkloads), or the stream
// ends with PermissionDenied naming the claim, and no other workload
// notices. So SDS secrets, endpoint membership and the SANs clients accept
// all follow proven identities. WithPlaintextXDS turns all of this off,
// for tests of plaintext clients only, and New logs it as insecure.
//
// Configuration given to New (WithConfig, WithConfigFile) is loaded before
// any request is answered, and New fails if it does not load: a restarted
// control plane never answers with a weaker configuration than the one it
// was given.
//
// # Certificates for agentless workloads
//
// Besides writing certificate files (WriteBootstrap, IssueSVID), the CA
// serves Istio's IstioCertificateService on Addr, as istiod does on port
// 15012, for workloads that make their own key (mesh/identity/csr).
// A caller authenticates with the bearer token WorkloadToken minted for its
// namespace and service account, and is issued only that SPIFFE ID.
// ServeCATLS adds a second TLS endpoint for the CA alone.
//
// # Certificates over SDS
//
// Any node that asks for SDS secrets gets "default" (an SVID minted for
// the namespace and service account its credential proved, with its key) and "ROOTCA"
// (the trust domain's bundle as a SPIFFE validator config). WithSDS(true)
// makes the generated TLS contexts name those secrets instead of the
// bootstrap's certificate provider, and WithSDSRotation re-mints and
// pushes the SVIDs on an interval.
package controlplane
