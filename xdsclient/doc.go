// Package xdsclient is mesh's xDS client: it reads the gRPC xDS bootstrap,
// keeps one ADS stream (state of the world or delta) to the first
// reachable xDS server of each server list in use, decodes and validates Listener,
// RouteConfiguration, Cluster and ClusterLoadAssignment resources into
// mesh's own immutable types, and hands them to watchers.
//
//	bs, err := xdsclient.BootstrapFromEnv() // MESH_BOOTSTRAP, GRPC_XDS_BOOTSTRAP(_CONFIG)
//	if err != nil {
//		return err
//	}
//	client, err := xdsclient.New(bs, xdsclient.WithLogger(slog.Default()))
//	if err != nil {
//		return err
//	}
//	defer client.Close()
//	cancel := client.WatchListener("payments.default.svc.cluster.local:8080", func(ev xdsclient.Event[*xdsclient.Listener]) {
//		switch {
//		case ev.NotFound: // the control plane removed it
//		case ev.Err != nil: // NACK or stream trouble: keep using the last good one
//		default: // ev.Resource is the new version
//		}
//	})
//	defer cancel()
//
// # Protocol
//
// The stream opens on the first watch. Each request carries the full set
// of names watched for its type; the node goes on the first request of
// every stream. A response is ACKed with its version and nonce. If any
// resource in it is invalid, the valid ones are still applied, the whole
// response is NACKed with the last accepted version and an error_detail
// naming each bad resource and field, and watchers of a bad resource get
// Err while its last good version stays cached (gRFC A46). For listeners
// and clusters a watched resource missing from a response is deleted
// (NotFound); a watched resource that never arrives is reported NotFound
// after the resource timeout (gRFC A27). When the stream breaks, watchers
// get Err, the cache keeps serving, and the client reconnects with backoff
// and resubscribes with the versions it last ACKed.
//
// # Credentials to the server
//
// Each server is dialed with its first supported channel_creds: "insecure"
// or "tls" (gRFC A65: ca_certificate_file, and certificate_file with
// private_key_file for mTLS), and with every "jwt_token_file" call_creds
// (gRFC A97), which sends the token in that file as
// "authorization: Bearer" on the stream and only over TLS. Certificate
// and token files are read again when they change, so rotation needs no
// restart: the istio-agent path to istiod (TLS, a service-account token
// from a file) and the embedded control plane's bootstraps both use it.
//
// When the last watch of a type is cancelled no request is sent for that
// type: on a state-of-the-world stream an empty name list asks for every
// listener or cluster (istiod reads it as a wildcard), so the client
// simply ignores further updates for names it no longer watches. A
// proxyless client only ever asks for names it needs, so wildcard
// subscriptions are never used, on either protocol.
//
// # Delta xDS
//
// A server whose server_features include "delta" (ServerFeatureDelta) is
// spoken to with the incremental protocol: each request subscribes and
// unsubscribes only the names that changed, every resource carries its
// own version, removed_resources means NotFound, and a reconnect lists
// the versions already held (initial_resource_versions) so the server
// resends only what changed. ACKs and NACKs go by nonce, a NACK with an
// error_detail naming each bad resource and field. An ACK or NACK carries
// only the nonce (and error), and a subscription change never carries
// one, as istiod requires: it drops a request whose nonce is stale whole,
// and ignores the names in a NACK. An LDS or CDS change resubscribes
// every watched name, since istiod takes the names of its answer as the
// client's whole LDS or CDS subscription.
//
// # Rejected responses
//
// A resource that fails validation is NACKed and the others of its
// response apply (gRFC A46). A response with an entry that cannot be read
// as a named resource at all (a foreign type, truncated bytes, no name)
// is NACKed whole, naming the entry's index, and nothing of it applies:
// not its updates, nor the deletion of what it seems to leave out. A
// state-of-the-world response that leaves out a resource never received
// does not make it NotFound (it may answer an earlier request); its
// does-not-exist timer does. A resource rejected before it was ever good
// gives its error to every watcher, however late.
//
// # Fallback (gRFC A71)
//
// With several xds_servers the client uses the first it can reach. If
// the primary cannot be reached it moves to the next at once, keeping
// the cached resources until the new server sends its own; while on a
// fallback it keeps trying the primary and returns to it as soon as it
// answers. Each server speaks its own protocol (its "delta" feature).
//
// # Federation (gRFC A47)
//
// A watched name "xdstp://<authority>/<type>/<id>?<params>" is fetched
// from the servers of its authority in the bootstrap's authorities (the
// top-level xds_servers when the authority lists none); old-style names
// use the top-level servers. There is one ADS stream per distinct server
// list, shared by every authority that names it. Names are matched in
// canonical form (context parameters sorted),
// so "?b=2&a=1" and "?a=1&b=2" are one resource. The type segment must be
// the watched type's proto name (envoy.config.listener.v3.Listener for
// WatchListener, ...). A name whose authority is not in the bootstrap, or
// a malformed one, gets an Err ("xds: unknown authority",
// "xds: invalid resource name") and opens no stream. A stream failure or a
// deletion affects only the resources of that stream's authorities.
// Bootstrap.ClientListenerName and ServerListenerName apply the listener
// name templates to a dial target and a listening address.
//
// # Resource lifecycle
//
// With the "ignore_resource_deletion" server feature (gRFC A53) a
// listener or cluster the server deletes keeps serving and the deletion
// is logged; route configurations and endpoints are deleted as usual.
// The error behind a NotFound names the resource, its type and the
// server (see Dump).
//
// # Last-good cache
//
// WithCache(path) writes every accepted resource to path after each
// response (atomically, 0600, with a SHA-256 checksum) and loads it at
// New, so a process that restarts while the control plane is down still
// serves its last configuration. A corrupt file, or one written for
// another node, is logged and ignored.
//
// # Visibility
//
// Dump lists every watched resource with its version, status (ACKED,
// NACKED, DOES_NOT_EXIST, REQUESTED), error, update time and the fields
// mesh ignored in it; RegisterCSDS serves the same as Envoy's Client
// Status Discovery Service. Fields mesh does not implement but may skip
// (optional HTTP filters of unknown types, routes with unsupported
// actions, unknown LB policies ahead of a known one in a
// load_balancing_policy list) are logged once per resource and listed in
// Dump, never dropped silently. Metrics go to the OpenTelemetry meter
// provider (WithMeterProvider): mesh.xds.client.connected,
// mesh.xds.client.resources{type,status}, mesh.xds.client.resource_updates
// and mesh.xds.client.nacks, each by type.
//
// Routes with actions mesh does not implement (redirect, direct_response)
// are dropped from the route table (and listed as ignored in Dump), so
// requests they would match fall through to later routes.
// HTTP filter configs are recorded by name and type URL only for now.
//
// # Secrets (SDS)
//
// WatchSecret fetches SDS Secret resources on the same stream: a
// tls_certificate (inline chain and key) or a validation_context
// (inline trusted_ca, or per-trust-domain bundles in a SPIFFE certificate
// validator config). TLS contexts may name secrets with sds_secret_config
// (over ADS) instead of certificate provider instances; such references
// have SDS set and Provider SDSProviderName(secret). Private keys never
// appear in errors, logs, Dump or CSDS (the key is "[redacted]"), and
// secrets are not written to the WithCache file.
//
// Envoy protos never leave this package. It reads and writes them with
// plain Go types generated from go-control-plane's descriptors
// (internal/lite), not with protobuf-go's generated types: those would
// link megabytes of code and build, on the first decode, descriptors for
// every message type reachable from a Listener. A program using mesh
// links no go-control-plane package. Package xdstest (test support) runs a
// real go-control-plane server and builds resources for tests.
package xdsclient
