// Package transport secures mesh connections with mutual TLS built from
// SPIFFE identities, as the xDS resources describe it per cluster (client
// side) and per filter chain (server side).
//
// Quick start:
//
//	providers := transport.ProviderMap{"default": src} // src is an identity.Source, e.g. a FileSource
//
//	// Client: the mesh's balancer attaches each address's cluster and TLS
//	// settings; addresses without them are dialed in plaintext.
//	conn, err := grpc.NewClient(target,
//		grpc.WithTransportCredentials(transport.NewClientCredentials(providers)))
//
//	// Server: the inbound listener resource (from an xdsclient.Client)
//	// decides each connection's handshake and RBAC policies.
//	in := transport.NewGRPCInbound(xdsClient, providers)
//	srv := grpc.NewServer(in.ServerOptions()...)
//	srv.Serve(in.Listen(lis, listenerResourceName))
//
//	// Or, choosing each connection's filter chain yourself, with the
//	// Authorizer enforcing that chain's RBAC filters:
//	authz := transport.NewAuthorizer()
//	srv := grpc.NewServer(append(authz.ServerOptions(),
//		grpc.Creds(transport.NewServerCredentials(providers, chooser)))...)
//
//	// In a handler, who called?
//	id, ok := transport.PeerID(ctx)
//
// A listener with a "tls" and a "raw_buffer" filter chain serves mTLS and
// plaintext clients on one port (istio's PERMISSIVE mode): a connection
// whose first bytes are a TLS handshake record gets the "tls" chain. A
// client that sends nothing within 10s is dropped.
//
// With WithPeerMetadata on both ends, two mesh workloads exchange their
// Istio peer metadata once per connection, right after the TLS handshake
// (ALPN "mesh-h2-peer-metadata"), and AuthInfo.PeerMetadata reports the
// other's; peers that do not offer it, such as grpc-go's own credentials
// and Envoy, speak plain "h2".
//
// GRPCInbound and HTTPInbound do all of the server side from the control
// plane's inbound listener resources (gRFC A36), as the mesh's servers do:
// they gate each listener on its resource, choose each connection's filter
// chain as Envoy would (destination prefix, transport protocol, source
// type, source prefix, source port), and drain connections a changed
// resource no longer admits (GOAWAY, then close).
//
// Authorization follows gRFC A41: the RBAC filters of the connection's
// chain run in order (istiod emits DENY before ALLOW); a refused RPC gets
// codes.PermissionDenied (403 from HTTPInbound) and the deciding policy is
// logged. LOG policies (istio's AUDIT) are logged and never refuse.
//
// Policies see the request Envoy would let them see. HTTPInbound normalizes
// each HTTP path as Istio's BASE option does (unreserved percent-encodings
// decoded once, "\\" read as "/", dot segments resolved; %00 gets 400), plus
// what the chain's HttpConnectionManager or WithPathNormalization add
// (MERGE_SLASHES, DECODE_AND_MERGE_SLASHES), and hands the handler that
// same path; methods that are not upper-case tokens get 400. A gRPC :path
// that is not "/service/method" is refused with codes.Unimplemented before
// any policy runs.
//
// Certificates are fetched from their identity.Source on every handshake,
// so rotated SVIDs take effect on the next connection without a restart.
package transport
