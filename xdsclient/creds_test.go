package xdsclient_test

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"mesh/controlplane"
	"mesh/internal/testutil"
	"mesh/xdsclient"
)

// writeAtomic replaces path's content the way token rotators do.
func writeAtomic(t *testing.T, path string, data []byte) {
	t.Helper()
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// The istio-agent path (TLS to the control plane, a bearer token read
// from a file, gRFC A65 + A97) against a server that checks the token:
// the embedded control plane. A token it refuses fails the stream; the
// file is read again when it changes, and the next stream is accepted.
func TestTokenFileCallCredsAgainstControlPlane(t *testing.T) {
	ctx := testutil.Context(t)
	cp, err := controlplane.New(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cp.Close() })
	w := controlplane.Workload{Name: "payments-v1", Service: "payments", Port: 8080, Address: "127.0.0.1:9001"}
	dir := t.TempDir()
	if _, err := cp.WriteBootstrap(dir, w); err != nil {
		t.Fatal(err)
	}
	// BootstrapJSON's channel carries the token only, no client certificate.
	data, err := cp.BootstrapJSON(w, dir)
	if err != nil {
		t.Fatal(err)
	}
	bs, err := xdsclient.ParseBootstrap(data)
	if err != nil {
		t.Fatal(err)
	}
	if len(bs.Servers[0].CallCreds) != 1 || bs.Servers[0].CallCreds[0].Type != xdsclient.CallCredsJWTTokenFile {
		t.Fatalf("call creds = %+v", bs.Servers[0].CallCreds)
	}
	tokenPath := filepath.Join(dir, controlplane.TokenFile)
	good, err := os.ReadFile(tokenPath)
	if err != nil {
		t.Fatal(err)
	}
	writeAtomic(t, tokenPath, []byte("mesh1.Zm9v.YmFy.AAAA\n")) // well-formed, signed by no one

	c, err := xdsclient.New(bs, xdsclient.WithBackoff(fastBackoff))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	evs := newEvents[*xdsclient.Listener]()
	c.WatchListener(controlplane.InboundListenerPrefix+w.Address, evs.fn)
	ev := next(ctx, t, evs, nil)
	if !errors.Is(ev.Err, xdsclient.ErrStreamFailed) || !strings.Contains(ev.Err.Error(), "does not verify") {
		t.Fatalf("with a forged token: %+v, want a stream failure saying the token does not verify", ev)
	}
	writeAtomic(t, tokenPath, good)
	if ev := next(ctx, t, evs, isValue[*xdsclient.Listener]); !ev.Resource.IsServer() {
		t.Fatalf("after the token was fixed: %+v", ev)
	}
}

func TestBootstrapCallCreds(t *testing.T) {
	const tlsCreds = `"channel_creds": [{"type": "tls", "config": {}}]`
	for _, tc := range []struct {
		name, server, wantErr string
		callCreds             int
	}{
		{"token file", tlsCreds + `, "call_creds": [{"type": "jwt_token_file", "config": {"jwt_token_file": "/t"}}]`, "", 1},
		{"unknown type ignored", tlsCreds + `, "call_creds": [{"type": "access_token", "config": {}}]`, "", 0},
		{"missing path", tlsCreds + `, "call_creds": [{"type": "jwt_token_file", "config": {}}]`,
			`xds_servers[0].call_creds[0].config: jwt_token_file: missing`, 0},
		{"no config", tlsCreds + `, "call_creds": [{"type": "jwt_token_file"}]`, `xds_servers[0].call_creds[0].config: missing`, 0},
		{"over plaintext", `"channel_creds": [{"type": "insecure"}], "call_creds": [{"type": "jwt_token_file", "config": {"jwt_token_file": "/t"}}]`,
			`xds_servers[0].call_creds[0]: "jwt_token_file" needs "tls" channel creds, not "insecure"`, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bs, err := xdsclient.ParseBootstrap([]byte(`{"xds_servers": [{"server_uri": "127.0.0.1:1", ` + tc.server + `}]}`))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := len(bs.Servers[0].CallCreds); got != tc.callCreds {
				t.Fatalf("call creds = %+v", bs.Servers[0].CallCreds)
			}
		})
	}
}

// Rotated channel credential files (gRFC A65) take effect on the next
// connection: a client certificate from a CA the server does not trust is
// refused, and the one written in its place is read and accepted.
func TestTLSChannelCredsFilesReloaded(t *testing.T) {
	ctx := testutil.Context(t)
	ca, foreign := newTestCA(t), newTestCA(t)
	srv := newMTLSServer(t, ca)
	dir := t.TempDir()
	badCert, badKey := foreign.issue(t, 3)
	writeAtomic(t, filepath.Join(dir, "ca.pem"), ca.pem)
	writeAtomic(t, filepath.Join(dir, "cert.pem"), badCert)
	writeAtomic(t, filepath.Join(dir, "key.pem"), badKey)
	eds := watchOverFileTLS(t, srv, dir)
	if ev := next(ctx, t, eds, nil); !errors.Is(ev.Err, xdsclient.ErrStreamFailed) {
		t.Fatalf("with a foreign client certificate: %+v, want a stream failure", ev)
	}
	goodCert, goodKey := ca.issue(t, 4)
	writeAtomic(t, filepath.Join(dir, "key.pem"), goodKey)
	writeAtomic(t, filepath.Join(dir, "cert.pem"), goodCert)
	if ev := next(ctx, t, eds, isValue[*xdsclient.Endpoints]); ev.Resource == nil {
		t.Fatalf("after rotation: %+v", ev)
	}
}
