package xdsclient

import (
	"testing"
	"unicode"
	"unicode/utf8"
)

// FuzzParseBootstrap checks that no bootstrap text makes the parser panic,
// that every rejection explains itself in a lowercase message, and that
// every accepted bootstrap has a server and validates.
func FuzzParseBootstrap(f *testing.F) {
	f.Add([]byte(istioBootstrap))
	f.Add([]byte(`{"xds_servers": [{"server_uri": "127.0.0.1:15010", "channel_creds": [{"type": "insecure"}]}], "node": {"id": "n"}}`))
	f.Add([]byte(`{"xds_servers": []}`))
	f.Add([]byte(`{"xds_servers": [{"server_uri": "", "channel_creds": [{"type": "nope"}]}]}`))
	f.Add([]byte(`{"certificate_providers": {"default": {"plugin_name": "file_watcher", "config": {"refresh_interval": "-1s"}}}}`))
	f.Add([]byte(`null`))
	f.Add([]byte(`{"authorities": {"a": {"client_listener_resource_name_template": "xdstp://b/%s"}}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		bs, err := ParseBootstrap(data)
		if err != nil {
			msg := err.Error()
			if msg == "" {
				t.Fatal("empty error message")
			}
			if r, _ := utf8.DecodeRuneInString(msg); unicode.IsUpper(r) {
				t.Fatalf("error %q does not start in lowercase", msg)
			}
			return
		}
		if bs == nil {
			t.Fatal("nil bootstrap without an error")
		}
		if len(bs.Servers) == 0 {
			t.Fatal("accepted a bootstrap without xds servers")
		}
		if err := bs.Validate(); err != nil {
			t.Fatalf("ParseBootstrap accepted what Validate rejects: %v", err)
		}
	})
}
