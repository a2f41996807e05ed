package xdsclient

import (
	"testing"

	"google.golang.org/protobuf/types/known/anypb"
)

// FuzzDecode feeds arbitrary bytes to each resource decoder: whatever
// the input, decoding returns a value or an error and never panics. The
// seed corpus in testdata/fuzz/FuzzDecode holds valid and invalid
// resources of each type (kind 0-3: listener, route_config, cluster,
// cluster_load_assignment).
func FuzzDecode(f *testing.F) {
	ks := kinds()
	f.Fuzz(func(t *testing.T, kind uint8, data []byte) {
		info := ks[int(kind)%int(numKinds)]
		dc := &decodeContext{providers: map[string]CertificateProvider{"default": {}}, logger: discardLogger()}
		name, v, err := info.decode(dc, &anypb.Any{TypeUrl: info.typeURL, Value: data})
		if err != nil {
			if err.Error() == "" {
				t.Fatal("empty error message")
			}
			return
		}
		if name == "" || v == nil {
			t.Fatalf("%s decoded without error but name=%q value=%v", info.name, name, v)
		}
	})
}
