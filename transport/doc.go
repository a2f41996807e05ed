// Package transport secures mesh connections with mutual TLS built from
// SPIFFE identities, as the xDS resources describe it per cluster (client
// side) and per filter chain (server side).
//
// Quick start:
//
//	providers := transport.ProviderMap{"default": src} // src is an identity.Source, e.g. a FileSource
//
//	// Client: the balancer attaches each address's cluster and TLS settings
//	// (mesh/internal/handshake); addresses without them are dialed in plaintext.
//	conn, err := grpc.NewClient(target,
//		grpc.WithTransportCredentials(transport.NewClientCredentials(providers)))
//
//	// Server: chooser picks the TLS settings of each accepted connection,
//	// typically from the inbound listener's matching filter chain.
//	srv := grpc.NewServer(grpc.Creds(transport.NewServerCredentials(providers, chooser)))
//
//	// In a handler, who called?
//	id, ok := transport.PeerID(ctx)
//
// Certificates are fetched from their identity.Source on every handshake,
// so rotated SVIDs take effect on the next connection without a restart.
package transport
