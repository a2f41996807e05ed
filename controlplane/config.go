package controlplane

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strings"

	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"
	networking "istio.io/api/networking/v1alpha3"
	security "istio.io/api/security/v1beta1"
	"sigs.k8s.io/yaml"
)

// Kinds of Istio configuration the server understands.
const (
	KindVirtualService     = "VirtualService"
	KindDestinationRule    = "DestinationRule"
	KindPeerAuthentication = "PeerAuthentication"
	KindServiceEntry       = "ServiceEntry"
	KindWorkloadEntry      = "WorkloadEntry"
)

// rootNamespace holds mesh-wide policy, as in Istio.
const rootNamespace = "istio-system"

// ErrNotFound is returned by Delete when no such object exists.
var ErrNotFound = errors.New("object not found")

// ErrClosed is returned by methods called after Close.
var ErrClosed = errors.New("control plane closed")

type objectKey struct {
	kind, namespace, name string
}

func (k objectKey) String() string { return k.kind + " " + k.namespace + "/" + k.name }

// object is one parsed Istio resource; spec is never mutated after parsing.
type object struct {
	key  objectKey
	spec proto.Message
}

type configSet map[objectKey]*object

func (c configSet) clone() configSet {
	out := make(configSet, len(c))
	for k, v := range c {
		out[k] = v
	}
	return out
}

// sorted returns the objects of one kind ordered by namespace/name, so that
// generation is deterministic.
func (c configSet) sorted(kind string) []*object {
	var out []*object
	for k, o := range c {
		if k.kind == kind {
			out = append(out, o)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].key.namespace != out[j].key.namespace {
			return out[i].key.namespace < out[j].key.namespace
		}
		return out[i].key.name < out[j].key.name
	})
	return out
}

var documentSeparator = regexp.MustCompile(`(?m)^---[ \t]*(#.*)?\r?$`)

type documentHeader struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name      string `json:"name"`
		Namespace string `json:"namespace"`
	} `json:"metadata"`
	Spec json.RawMessage `json:"spec"`
}

func newSpec(kind string) (proto.Message, string) {
	switch kind {
	case KindVirtualService:
		return &networking.VirtualService{}, "networking.istio.io"
	case KindDestinationRule:
		return &networking.DestinationRule{}, "networking.istio.io"
	case KindServiceEntry:
		return &networking.ServiceEntry{}, "networking.istio.io"
	case KindWorkloadEntry:
		return &networking.WorkloadEntry{}, "networking.istio.io"
	case KindPeerAuthentication:
		return &security.PeerAuthentication{}, "security.istio.io"
	case KindAuthorizationPolicy:
		return &security.AuthorizationPolicy{}, "security.istio.io"
	}
	return nil, ""
}

// parseYAML decodes multi-document Istio YAML. Errors name the document
// (index, kind, namespace/name) and the field path.
func parseYAML(data []byte) ([]*object, error) {
	docs := documentSeparator.Split(string(data), -1)
	var out []*object
	seen := map[objectKey]int{}
	for i, doc := range docs {
		if strings.TrimSpace(doc) == "" {
			continue
		}
		obj, err := parseDocument(i, []byte(doc))
		if err != nil {
			return nil, err
		}
		if obj == nil {
			continue
		}
		if prev, dup := seen[obj.key]; dup {
			return nil, fmt.Errorf("document %d: %s: duplicate of document %d", i, obj.key, prev)
		}
		seen[obj.key] = i
		out = append(out, obj)
	}
	return out, nil
}

func parseDocument(index int, doc []byte) (*object, error) {
	js, err := yaml.YAMLToJSON(doc)
	if err != nil {
		return nil, fmt.Errorf("document %d: invalid yaml: %w", index, err)
	}
	js = bytes.TrimSpace(js)
	if bytes.Equal(js, []byte("null")) {
		return nil, nil // only comments
	}
	if len(js) == 0 || js[0] != '{' {
		return nil, fmt.Errorf("document %d: must be a mapping with apiVersion, kind, metadata and spec", index)
	}
	var hdr documentHeader
	if err := json.Unmarshal(js, &hdr); err != nil {
		return nil, fmt.Errorf("document %d: %w", index, err)
	}
	if hdr.Kind == "" {
		return nil, fmt.Errorf("document %d: kind: required", index)
	}
	spec, group := newSpec(hdr.Kind)
	if spec == nil {
		return nil, fmt.Errorf("document %d: kind %q: unsupported (want VirtualService, DestinationRule, PeerAuthentication, AuthorizationPolicy, ServiceEntry or WorkloadEntry)", index, hdr.Kind)
	}
	if hdr.Metadata.Namespace == "" {
		hdr.Metadata.Namespace = "default"
	}
	key := objectKey{kind: hdr.Kind, namespace: hdr.Metadata.Namespace, name: hdr.Metadata.Name}
	where := fmt.Sprintf("document %d (%s %s/%s)", index, hdr.Kind, key.namespace, key.name)
	if g, _, _ := strings.Cut(hdr.APIVersion, "/"); g != group {
		return nil, fmt.Errorf("%s: apiVersion %q: want %s/<version>", where, hdr.APIVersion, group)
	}
	if key.name == "" {
		return nil, fmt.Errorf("%s: metadata.name: required", where)
	}
	if len(key.name) > 253 || !dnsSubdomain.MatchString(key.name) {
		return nil, fmt.Errorf("%s: metadata.name %q: must be a lowercase DNS name", where, key.name)
	}
	if len(key.namespace) > 63 || !dnsLabel.MatchString(key.namespace) {
		return nil, fmt.Errorf("%s: metadata.namespace %q: must be a lowercase DNS label", where, key.namespace)
	}
	if len(hdr.Spec) == 0 || bytes.Equal(bytes.TrimSpace(hdr.Spec), []byte("null")) {
		return nil, fmt.Errorf("%s: spec: required", where)
	}
	hdr.Spec = normalizeDurations(spec.ProtoReflect().Descriptor(), hdr.Spec)
	if err := (protojson.UnmarshalOptions{DiscardUnknown: false}).Unmarshal(hdr.Spec, spec); err != nil {
		if path, problem := locateSpecError(spec.ProtoReflect().Descriptor(), hdr.Spec); path != "" {
			// problem already carries protojson's message, minus its offset
			// into a document the user never wrote.
			return nil, fmt.Errorf("%s: %s: %s", where, path, problem)
		}
		return nil, fmt.Errorf("%s: spec: %w", where, err)
	}
	return &object{key: key, spec: spec}, nil
}
