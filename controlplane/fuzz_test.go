package controlplane

import (
	"testing"
)

// FuzzParseYAML checks that no input makes parsing or validation panic and
// that every accepted object carries a kind, namespace and name.
func FuzzParseYAML(f *testing.F) {
	f.Add([]byte(subsetsYAML))
	f.Add([]byte(vsYAML(90, 10)))
	f.Add([]byte("apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: x}\nspec: {mtls: {mode: STRICT}}\n"))
	f.Add([]byte("---\n---\n# nothing\n"))
	f.Add([]byte(authzPolicies))
	f.Fuzz(func(t *testing.T, data []byte) {
		objs, err := parseYAML(data)
		if err != nil {
			if err.Error() == "" {
				t.Fatal("empty error message")
			}
			return
		}
		cfg := configSet{}
		changed := map[objectKey]bool{}
		for _, o := range objs {
			if o.key.kind == "" || o.key.namespace == "" || o.key.name == "" || o.spec == nil {
				t.Fatalf("incomplete object %+v", o.key)
			}
			cfg[o.key] = o
			changed[o.key] = true
		}
		reg := buildRegistry("cluster.local", map[string]Workload{
			"default/p": {Name: "p", Namespace: "default", ServiceAccount: "default", Service: "payments", Port: 8080},
		}, nil, cfg)
		if validateConfig(cfg, changed, reg) == nil {
			// Valid config must generate without panicking.
			g := newGeneration("cluster.local", cfg, reg)
			g.nodeResources(&nodeInfo{namespace: "default"}, []string{"payments:8080", InboundListenerPrefix + "127.0.0.1:1"})
		}
	})
}
