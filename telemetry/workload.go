package telemetry

import (
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
)

// Header names of Istio's HTTP metadata exchange and of Envoy's request ID.
const (
	// HeaderPeerMetadata carries a workload's metadata: the base64 of a
	// serialized google.protobuf.Struct, as Istio sidecars send it.
	HeaderPeerMetadata = "x-envoy-peer-metadata"
	// HeaderPeerMetadataID carries the workload's node ID,
	// "sidecar~<ip>~<pod>.<namespace>~<namespace>.svc.cluster.local".
	HeaderPeerMetadataID = "x-envoy-peer-metadata-id"
	// HeaderRequestID carries the request ID Envoy generates at the edge and
	// every hop propagates.
	HeaderRequestID = "x-request-id"
)

// Keys of the peer metadata Struct and of its LABELS, as Istio names them.
const (
	peerKeyName        = "NAME"
	peerKeyNamespace   = "NAMESPACE"
	peerKeyWorkload    = "WORKLOAD_NAME"
	peerKeyCluster     = "CLUSTER_ID"
	peerKeyMesh        = "MESH_ID"
	peerKeyOwner       = "OWNER"
	peerKeyLabels      = "LABELS"
	peerKeyAccount     = "SERVICE_ACCOUNT"
	peerKeyPlatform    = "PLATFORM_METADATA"
	labelApp           = "app"
	labelVersion       = "version"
	labelCanonicalName = "service.istio.io/canonical-name"
	labelCanonicalRev  = "service.istio.io/canonical-revision"
	ownerPrefix        = "kubernetes://apis/apps/v1/namespaces/"
)

// maxPeerMetadataLen bounds the header a peer may send: Istio's metadata is a
// few hundred bytes, and decoding is not free.
const maxPeerMetadataLen = 16 << 10

// Workload describes a workload for Istio's metric labels and peer metadata.
// Empty fields are reported as "unknown", as Istio does.
type Workload struct {
	// Name is the workload (Deployment) name, e.g. "payments-v1".
	Name string
	// Namespace is the workload's namespace.
	Namespace string
	// App and Version are the workload's "app" and "version" labels.
	App     string
	Version string
	// CanonicalService and CanonicalRevision are Istio's canonical service
	// labels; they default to App (or Name) and Version (or "latest").
	CanonicalService  string
	CanonicalRevision string
	// Cluster is the Istio cluster ID, e.g. "Kubernetes".
	Cluster string
	// Principal is the workload's SPIFFE ID,
	// "spiffe://<trust-domain>/ns/<ns>/sa/<sa>". It never travels in peer
	// metadata: peers learn it from the mTLS handshake.
	Principal string
	// Instance is the pod (instance) name; it defaults to Name.
	Instance string
	// MeshID is the Istio mesh ID, sent as MESH_ID when set.
	MeshID string
}

// Validate reports a malformed workload: a Principal that is not a SPIFFE
// ID, or a field holding a character that cannot travel in a header.
func (w Workload) Validate() error {
	fields := []struct{ name, value string }{
		{"Name", w.Name}, {"Namespace", w.Namespace}, {"App", w.App}, {"Version", w.Version},
		{"CanonicalService", w.CanonicalService}, {"CanonicalRevision", w.CanonicalRevision},
		{"Cluster", w.Cluster}, {"Principal", w.Principal}, {"Instance", w.Instance}, {"MeshID", w.MeshID},
	}
	for _, f := range fields {
		for _, r := range f.value {
			if r < 0x20 || r == 0x7f {
				return fmt.Errorf("telemetry: workload field %s: control character %q", f.name, r)
			}
		}
	}
	if w.Principal != "" && !strings.HasPrefix(w.Principal, "spiffe://") {
		return fmt.Errorf("telemetry: workload field Principal: %q is not a SPIFFE ID (want spiffe://...)", w.Principal)
	}
	return nil
}

// IsZero reports whether no field is set.
func (w Workload) IsZero() bool { return w == Workload{} }

func (w Workload) canonicalService() string {
	switch {
	case w.CanonicalService != "":
		return w.CanonicalService
	case w.App != "":
		return w.App
	}
	return w.Name
}

func (w Workload) canonicalRevision() string {
	switch {
	case w.CanonicalRevision != "":
		return w.CanonicalRevision
	case w.Version != "":
		return w.Version
	case w.canonicalService() != "":
		return "latest"
	}
	return ""
}

func (w Workload) instance() string {
	if w.Instance != "" {
		return w.Instance
	}
	return w.Name
}

// serviceAccount returns the "sa" segment of a SPIFFE ID in Istio's form.
func serviceAccount(principal string) string {
	_, sa, ok := strings.Cut(principal, "/sa/")
	if !ok || strings.Contains(sa, "/") {
		return ""
	}
	return sa
}

// PeerMetadata encodes w as the two headers of Istio's metadata exchange:
// the node ID for HeaderPeerMetadataID and the base64 Struct for
// HeaderPeerMetadata.
func PeerMetadata(w Workload) (id, value string, err error) {
	if err := w.Validate(); err != nil {
		return "", "", err
	}
	labels := map[string]any{}
	setIf := func(m map[string]any, k, v string) {
		if v != "" {
			m[k] = v
		}
	}
	setIf(labels, labelApp, w.App)
	setIf(labels, labelVersion, w.Version)
	setIf(labels, labelCanonicalName, w.canonicalService())
	setIf(labels, labelCanonicalRev, w.canonicalRevision())
	fields := map[string]any{peerKeyLabels: labels}
	setIf(fields, peerKeyName, w.instance())
	setIf(fields, peerKeyNamespace, w.Namespace)
	setIf(fields, peerKeyWorkload, w.Name)
	setIf(fields, peerKeyCluster, w.Cluster)
	setIf(fields, peerKeyMesh, w.MeshID)
	setIf(fields, peerKeyAccount, serviceAccount(w.Principal))
	if w.Name != "" && w.Namespace != "" {
		fields[peerKeyOwner] = ownerPrefix + w.Namespace + "/deployments/" + w.Name
	}
	st, err := structpb.NewStruct(fields)
	if err != nil {
		return "", "", fmt.Errorf("telemetry: peer metadata: %w", err)
	}
	raw, err := proto.MarshalOptions{Deterministic: true}.Marshal(st)
	if err != nil {
		return "", "", fmt.Errorf("telemetry: peer metadata: %w", err)
	}
	id = "sidecar~~" + w.instance() + "." + w.Namespace + "~" + w.Namespace + ".svc.cluster.local"
	return id, base64.StdEncoding.EncodeToString(raw), nil
}

// peerIDLen is the length of the x-envoy-peer-metadata-id PeerMetadata
// gives w, for sizing a request without reading the header.
func peerIDLen(w *Workload) int {
	return len("sidecar~~") + len(w.instance()) + 1 + 2*len(w.Namespace) + 1 + len(".svc.cluster.local")
}

// ErrNoPeerMetadata is returned by ParsePeerMetadata for an empty header.
var ErrNoPeerMetadata = errors.New("telemetry: no peer metadata")

// ParsePeerMetadata decodes the value of an x-envoy-peer-metadata header,
// sent by an Istio sidecar or by another mesh workload, into a Workload.
// Principal stays empty: it comes from the handshake, not from metadata.
func ParsePeerMetadata(value string) (Workload, error) {
	if value == "" {
		return Workload{}, ErrNoPeerMetadata
	}
	if len(value) > maxPeerMetadataLen {
		return Workload{}, fmt.Errorf("telemetry: header %s: %d bytes, more than the %d allowed", HeaderPeerMetadata, len(value), maxPeerMetadataLen)
	}
	raw, err := base64.StdEncoding.DecodeString(value)
	if err != nil {
		// Some proxies strip padding; accept that too.
		var rawErr error
		if raw, rawErr = base64.RawStdEncoding.DecodeString(strings.TrimRight(value, "=")); rawErr != nil {
			return Workload{}, fmt.Errorf("telemetry: header %s: not base64: %w", HeaderPeerMetadata, err)
		}
	}
	var st structpb.Struct
	if err := proto.Unmarshal(raw, &st); err != nil {
		return Workload{}, fmt.Errorf("telemetry: header %s: not a google.protobuf.Struct: %w", HeaderPeerMetadata, err)
	}
	str := func(s *structpb.Struct, key string) string {
		return s.GetFields()[key].GetStringValue()
	}
	labels := st.GetFields()[peerKeyLabels].GetStructValue()
	w := Workload{
		Name:              str(&st, peerKeyWorkload),
		Namespace:         str(&st, peerKeyNamespace),
		Cluster:           str(&st, peerKeyCluster),
		MeshID:            str(&st, peerKeyMesh),
		Instance:          str(&st, peerKeyName),
		App:               str(labels, labelApp),
		Version:           str(labels, labelVersion),
		CanonicalService:  str(labels, labelCanonicalName),
		CanonicalRevision: str(labels, labelCanonicalRev),
	}
	if w.App == "" {
		w.App = str(labels, "app.kubernetes.io/name")
	}
	if w.Version == "" {
		w.Version = str(labels, "app.kubernetes.io/version")
	}
	if w.Name == "" {
		w.Name = w.Instance // older proxies send only NAME
	}
	return w, nil
}

// peerCache remembers decoded peer metadata by header value: a workload
// talks to few peers, each sending the same bytes on every request, so
// decoding once per peer is enough. It is bounded and forgets everything
// when full, which is cheap and keeps a hostile peer from growing it.
type peerCache struct {
	// last is the value decoded most recently: a connection's peers send
	// the same value on every call, so most lookups end here, without
	// the lock or hashing hundreds of bytes.
	last    atomic.Pointer[peerCacheEntry]
	mu      sync.RWMutex // read-locked on lookups last missed, written once per peer
	entries map[string]*Workload
}

type peerCacheEntry struct {
	value string
	w     *Workload
}

const peerCacheSize = 256

// lookup returns the decoded workload for value, or nil when value is empty
// or malformed. A malformed value is remembered as such, and its error
// returned only the first time, so a log of it does not repeat per request.
func (c *peerCache) lookup(value string) (*Workload, error) {
	if value == "" {
		return nil, nil
	}
	if e := c.last.Load(); e != nil && e.value == value {
		return e.w, nil
	}
	c.mu.RLock()
	w, ok := c.entries[value]
	c.mu.RUnlock()
	if ok {
		return w, nil
	}
	parsed, err := ParsePeerMetadata(value)
	if err == nil {
		w = &parsed
	}
	c.mu.Lock()
	if c.entries == nil || len(c.entries) >= peerCacheSize {
		c.entries = make(map[string]*Workload)
	}
	c.entries[value] = w
	c.mu.Unlock()
	c.last.Store(&peerCacheEntry{value: value, w: w})
	return w, err
}
