// Package xdsclient is mesh's xDS client: it reads the gRPC xDS bootstrap,
// keeps one state-of-the-world ADS stream per xDS server, decodes and
// validates Listener, RouteConfiguration, Cluster and ClusterLoadAssignment
// resources into mesh's own immutable types, and hands them to watchers.
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
// When the last watch of a type is cancelled no request is sent for that
// type: on a state-of-the-world stream an empty name list asks for every
// listener or cluster (istiod reads it as a wildcard), so the client
// simply ignores further updates for names it no longer watches.
//
// Routes with actions mesh does not implement (redirect, direct_response)
// or with query parameter matchers are dropped from the route table with a
// logged warning, so requests they would match fall through to later routes.
// HTTP filter configs are recorded by name and type URL only for now.
//
// Envoy protos never leave this package; package xdstest (test support)
// runs a real go-control-plane server and builds resources for tests.
package xdsclient
