package shop

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"path/filepath"
	"testing"
	"time"

	"google.golang.org/grpc"

	"mesh"
	"mesh/controlplane"
	"mesh/xdsclient"
)

// LoadBootstrap reads the bootstrap in a workload's directory and, when
// certRefresh is set, makes its certificate files re-read that often.
func LoadBootstrap(dir string, certRefresh time.Duration) (*xdsclient.Bootstrap, error) {
	bs, err := xdsclient.LoadBootstrapFile(filepath.Join(dir, controlplane.BootstrapFile))
	if err != nil {
		return nil, err
	}
	if certRefresh > 0 {
		for name, p := range bs.CertificateProviders {
			if p.FileWatcher != nil {
				p.FileWatcher.RefreshInterval = certRefresh
				bs.CertificateProviders[name] = p
			}
		}
	}
	return bs, nil
}

// ServePayments serves Payments of version on a new loopback listener
// with a server made from m and opts, until the test ends.
func ServePayments(tb testing.TB, m *mesh.Mesh, version string, opts ...grpc.ServerOption) net.Addr {
	tb.Helper()
	srv := m.NewGRPCServer(opts...)
	(&Payments{Version: version}).Register(srv)
	return ServeGRPC(tb, srv)
}

// ServeGRPC serves srv on a new loopback listener until the test ends.
func ServeGRPC(tb testing.TB, srv *mesh.GRPCServer) net.Addr {
	tb.Helper()
	return serve(tb, srv.Serve, srv.Stop)
}

// ServeHTTP serves h with m's HTTPServer on a new loopback listener until
// the test ends.
func ServeHTTP(tb testing.TB, m *mesh.Mesh, h http.Handler) net.Addr {
	tb.Helper()
	hs := m.NewHTTPServer(h)
	return serve(tb, hs.Serve, func() { hs.Close() })
}

// serve runs serveOn on a new loopback listener until the test ends, then
// stops it and waits.
func serve(tb testing.TB, serveOn func(net.Listener) error, stop func()) net.Addr {
	tb.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	served := make(chan struct{})
	go func() {
		defer close(served)
		serveOn(lis)
	}()
	tb.Cleanup(func() {
		stop()
		<-served
	})
	return lis.Addr()
}

// StartWeb joins workload web-<version> to cp's mesh (with opts added to
// its mesh's) and serves, over the mesh's HTTPServer, a handler answering
// with its version, until the test ends.
func StartWeb(tb testing.TB, ctx context.Context, cp *controlplane.Server, version string, opts ...mesh.Option) net.Addr {
	tb.Helper()
	wl := controlplane.Workload{Name: "web-" + version, Namespace: "default", ServiceAccount: "web", Service: "web", Port: 8080,
		Labels: map[string]string{"app": "web", "version": version}}
	path, err := cp.WriteBootstrap(filepath.Join(tb.TempDir(), wl.Name), wl)
	if err != nil {
		tb.Fatal(err)
	}
	m, err := mesh.New(ctx, append([]mesh.Option{mesh.WithBootstrapFile(path), mesh.WithLogger(TestLogger(tb).With("workload", wl.Name))}, opts...)...)
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { m.Close() })
	return ServeHTTP(tb, m, http.HandlerFunc(func(rw http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/peer" { // which connection the request came on
			io.WriteString(rw, r.RemoteAddr)
			return
		}
		io.WriteString(rw, version)
	}))
}

// GetVersion sends one GET to url and returns the body of a 200 answer.
func GetVersion(ctx context.Context, client *http.Client, url string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", fmt.Errorf("GET %s: reading body: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: status %d: %s", url, resp.StatusCode, body)
	}
	return string(body), nil
}
