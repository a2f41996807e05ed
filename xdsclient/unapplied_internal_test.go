package xdsclient

import (
	"reflect"
	"testing"
)

// The applied-field trees share subtrees (a TLS context under several
// fields), so building one must never change another.
func TestMergeLeavesItsTreesUnchanged(t *testing.T) {
	tls := fields("sni", "common_tls_context.tls_certificates")
	a := merge(fields("name"), under("transport_socket.typed_config", tls))
	b := merge(a, fields("transport_socket.typed_config.common_tls_context.alpn_protocols", "transport_socket.name"))

	if want := fields("sni", "common_tls_context.tls_certificates"); !reflect.DeepEqual(tls, want) {
		t.Errorf("the shared subtree changed: %v, want %v", tls, want)
	}
	if _, ok := a["transport_socket"]["typed_config"]["common_tls_context"]["alpn_protocols"]; ok {
		t.Errorf("merging into b changed a: %v", a)
	}
	if _, ok := b["transport_socket"]["typed_config"]["common_tls_context"]["alpn_protocols"]; !ok {
		t.Errorf("b lacks what was merged into it: %v", b)
	}
	if _, ok := b["transport_socket"]["name"]; !ok {
		t.Errorf("b lacks transport_socket.name: %v", b)
	}
}

// A field applied whole stays whole when another tree lists fields below it.
func TestMergeKeepsAFieldAppliedWhole(t *testing.T) {
	for _, m := range []appliedFields{
		merge(fields("outlier_detection"), fields("outlier_detection.interval")),
		merge(fields("outlier_detection.interval"), fields("outlier_detection")),
	} {
		if below, ok := m["outlier_detection"]; !ok || below != nil {
			t.Errorf("outlier_detection = %v (listed %t), want applied whole", below, ok)
		}
	}
}
