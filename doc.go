// Package mesh is a proxyless service mesh for Go: routing with weighted
// canaries, mutual TLS with SPIFFE identities and tracing, done inside the
// process from xDS config, with no sidecar proxy.
//
// A workload joins the mesh with New, which reads the gRPC xDS bootstrap
// (the file istio-agent writes for proxyless gRPC, or one from the embedded
// control plane in package controlplane):
//
//	m, err := mesh.New(ctx) // MESH_BOOTSTRAP, GRPC_XDS_BOOTSTRAP or GRPC_XDS_BOOTSTRAP_CONFIG
//	if err != nil {
//		return err
//	}
//	defer m.Close()
//
//	// A client: routes, weights, endpoints and mTLS come from the control plane.
//	conn, err := m.Dial("payments.default.svc.cluster.local:8080")
//
//	// A server: its inbound listener says whether clients must present certificates.
//	srv := m.NewGRPCServer()
//	pb.RegisterPaymentsServer(srv, impl)
//	srv.Serve(lis)
//
// net/http gets the same routing, mTLS, authorization and telemetry through
// HTTPClient and NewHTTPServer. Handlers of either kind learn who called
// them with PeerID.
//
// One Mesh holds one xDS stream per control plane server, shared by all the
// channels and servers made from it, so a process should make one Mesh.
package mesh
