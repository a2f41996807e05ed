package mesh

import (
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/credentials"

	"mesh/telemetry"
	"mesh/transport"
	"mesh/xdsclient"
)

// localWorkload describes this process the way Istio's metrics and peer
// metadata do, from the bootstrap node's metadata (the keys istio-agent and
// the embedded control plane write) and the SPIFFE ID of its certificate.
func localWorkload(bs *xdsclient.Bootstrap, providers transport.ProviderMap) telemetry.Workload {
	md := bs.Node.Metadata
	str := func(key string) string { s, _ := md[key].(string); return s }
	labels := map[string]string{}
	if l, ok := md["LABELS"].(map[string]any); ok {
		for k, v := range l {
			if s, ok := v.(string); ok {
				labels[k] = s
			}
		}
	}
	first := func(vals ...string) string {
		for _, v := range vals {
			if v != "" {
				return v
			}
		}
		return ""
	}
	w := telemetry.Workload{
		Name:      first(str("WORKLOAD_NAME"), bs.Node.ID),
		Namespace: str("NAMESPACE"),
		App:       first(labels["app"], labels["app.kubernetes.io/name"]),
		Version:   first(labels["version"], labels["app.kubernetes.io/version"]),
		Cluster:   first(str("CLUSTER_ID"), bs.Node.Cluster),
		MeshID:    str("MESH_ID"),
	}
	w.CanonicalService = first(labels["service.istio.io/canonical-name"], w.App, w.Name)
	w.CanonicalRevision = first(labels["service.istio.io/canonical-revision"], w.Version, "latest")
	if src, ok := providers["default"]; ok {
		if svid, err := src.GetX509SVID(); err == nil {
			w.Principal = svid.ID.String()
		}
	}
	return w
}

// peerAuthMetadata is the peer metadata the other side of a connection
// sent at mesh's handshake, if it did.
func peerAuthMetadata(ai credentials.AuthInfo) (string, bool) {
	var value string
	switch ai := ai.(type) {
	case transport.AuthInfo:
		value = ai.PeerMetadata
	case *transport.AuthInfo:
		if ai != nil {
			value = ai.PeerMetadata
		}
	}
	return value, value != ""
}

// peerAuthPrincipal is the SPIFFE ID mesh's transport credentials verified
// for a connection, as telemetry labels want it.
func peerAuthPrincipal(ai credentials.AuthInfo) (string, bool) {
	var id spiffeid.ID
	switch ai := ai.(type) {
	case transport.AuthInfo:
		id = ai.PeerID
	case *transport.AuthInfo:
		if ai != nil {
			id = ai.PeerID
		}
	}
	if id.IsZero() {
		return "", false
	}
	return id.String(), true
}
