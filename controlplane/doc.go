// Package controlplane is mesh's embedded control plane: an istiod-like xDS
// server for proxyless gRPC workloads, with a CA that issues SPIFFE SVIDs,
// usable on one machine and as a test helper the way net/http/httptest is.
//
//	cp, err := controlplane.New(ctx) // ADS on 127.0.0.1:<free port>
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
// # Certificates for agentless workloads
//
// Besides writing certificate files (WriteBootstrap, IssueSVID), the CA
// serves Istio's IstioCertificateService on Addr, as istiod does on port
// 15012, for workloads that make their own key (mesh/identity/csr).
// A caller authenticates with the bearer token WorkloadToken minted for its
// namespace and service account, and is issued only that SPIFFE ID. The
// xDS port is plaintext, so there the token is only as safe as the network;
// ServeCATLS adds a TLS endpoint for the CA, verified with RootPEM under
// the name CAServerName.
//
// # Certificates over SDS
//
// Any node that asks for SDS secrets gets "default" (an SVID minted from
// its NAMESPACE and SERVICE_ACCOUNT metadata, with its key) and "ROOTCA"
// (the trust domain's bundle as a SPIFFE validator config). WithSDS(true)
// makes the generated TLS contexts name those secrets instead of the
// bootstrap's certificate provider, and WithSDSRotation re-mints and
// pushes the SVIDs on an interval.
package controlplane
