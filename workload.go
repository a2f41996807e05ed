package mesh

import (
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

// meshAuthInfo returns the AuthInfo of mesh's transport credentials that
// ai is, if it is one (by value: a pointer to it would cost an allocation
// per call).
func meshAuthInfo(ai credentials.AuthInfo) (transport.AuthInfo, bool) {
	switch ai := ai.(type) {
	case transport.AuthInfo:
		return ai, true
	case *transport.AuthInfo:
		if ai != nil {
			return *ai, true
		}
	}
	return transport.AuthInfo{}, false
}

// peerAuthMetadata is the peer metadata the other side of a connection
// sent at mesh's handshake, if it did.
func peerAuthMetadata(ai credentials.AuthInfo) (string, bool) {
	info, _ := meshAuthInfo(ai)
	return info.PeerMetadata, info.PeerMetadata != ""
}

// peerAuthPrincipal is the SPIFFE ID mesh's transport credentials verified
// for a connection, as telemetry labels want it.
func peerAuthPrincipal(ai credentials.AuthInfo) (string, bool) {
	info, _ := meshAuthInfo(ai)
	id := info.PeerID
	if id.IsZero() {
		return "", false
	}
	return id.String(), true
}
