package controlplane

import (
	"strings"
	"testing"

	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
)

// Each of Istio's pathNormalization options sets the fields istiod sets on
// inbound HttpConnectionManagers; New refuses an unknown one by name.
func TestPathNormalizationSetsTheHCMFields(t *testing.T) {
	for _, tc := range []struct {
		p      PathNormalization
		merge  bool
		action hcm.HttpConnectionManager_PathWithEscapedSlashesAction
	}{
		{"", false, hcm.HttpConnectionManager_IMPLEMENTATION_SPECIFIC_DEFAULT},
		{PathNormalizationBase, false, hcm.HttpConnectionManager_IMPLEMENTATION_SPECIFIC_DEFAULT},
		{PathNormalizationMergeSlashes, true, hcm.HttpConnectionManager_IMPLEMENTATION_SPECIFIC_DEFAULT},
		{PathNormalizationDecodeAndMergeSlashes, true, hcm.HttpConnectionManager_UNESCAPE_AND_FORWARD},
	} {
		m := &hcm.HttpConnectionManager{}
		(&generation{pathNormalization: tc.p}).setPathNormalization(m)
		if !m.GetNormalizePath().GetValue() || m.GetMergeSlashes() != tc.merge || m.GetPathWithEscapedSlashesAction() != tc.action {
			t.Errorf("%q: normalize_path %v merge_slashes %t action %v", tc.p, m.GetNormalizePath(), m.GetMergeSlashes(), m.GetPathWithEscapedSlashesAction())
		}
	}
	_, err := New(t.Context(), WithPathNormalization("LOOSE"))
	if err == nil || !strings.Contains(err.Error(), `"LOOSE"`) {
		t.Fatalf("New with an unknown normalization: %v", err)
	}
}
