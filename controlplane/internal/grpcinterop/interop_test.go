// Package grpcinterop runs grpc-go's own proxyless xDS client and server
// against the embedded control plane.
//
// It is a module of its own: google.golang.org/grpc/xds pulls in modules
// that mesh does not require, and the library must never import it. Run it
// from this directory with `go test ./...`, and again with
// GRPC_EXPERIMENTAL_XDS_BOOTSTRAP_CALL_CREDS=true for grpc-go's token
// file call credentials (gRFC A97).
package grpcinterop

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"mesh/controlplane"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	xdscreds "google.golang.org/grpc/credentials/xds"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/xds"
)

func meshYAML(v1, v2 int) []byte {
	return fmt.Appendf(nil, `
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default}
spec: {mtls: {mode: STRICT}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: payments}
spec:
  host: payments
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: payments}
spec:
  hosts: [payments]
  http:
  - route:
    - destination: {host: payments, subset: v1}
      weight: %d
    - destination: {host: payments, subset: v2}
      weight: %d
`, v1, v2)
}

// TestGRPCGoXDSInterop: bootstraps from WriteBootstrap, inbound listeners
// with STRICT mTLS from the file_watcher certificates, weighted subset
// routing, and a routing change, all as grpc-go's xDS implementation sees
// them.
func TestGRPCGoXDSInterop(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cp, err := controlplane.New(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cp.Close() })
	if err := cp.Apply(meshYAML(100, 0)); err != nil {
		t.Fatal(err)
	}

	versionAt := map[string]string{}
	for _, version := range []string{"v1", "v2"} {
		bootstrap := writeBootstrap(t, cp, controlplane.Workload{
			Name: "payments-" + version, Service: "payments", Port: 8080, ServiceAccount: "payments",
			Labels: map[string]string{"app": "payments", "version": version},
		})
		versionAt[serveXDS(t, bootstrap)] = version
	}

	checkout := controlplane.Workload{Name: "checkout", Service: "checkout", Port: 8080, ServiceAccount: "checkout"}
	clientBootstrap := writeBootstrap(t, cp, checkout)
	if os.Getenv("GRPC_EXPERIMENTAL_XDS_BOOTSTRAP_CALL_CREDS") == "true" {
		// grpc-go then reads call_creds (gRFC A97): the client's channel
		// proves checkout by the token file alone, no client certificate.
		dir := filepath.Join(t.TempDir(), "checkout-token-only")
		if _, err := cp.WriteBootstrap(dir, checkout); err != nil {
			t.Fatal(err)
		}
		if clientBootstrap, err = cp.BootstrapJSON(checkout, dir); err != nil {
			t.Fatal(err)
		}
	}
	conn := dialXDS(t, clientBootstrap, "xds:///payments:8080")
	client := healthpb.NewHealthClient(conn)

	// waitForVersion calls until an RPC lands on version, over mTLS.
	waitForVersion := func(version string) {
		t.Helper()
		for {
			var p peer.Peer
			_, err := client.Check(ctx, &healthpb.HealthCheckRequest{}, grpc.Peer(&p), grpc.WaitForReady(true))
			if ctx.Err() != nil {
				t.Fatalf("no RPC reached %s: last error %v", version, err)
			}
			if err != nil || p.Addr == nil || versionAt[p.Addr.String()] != version {
				continue
			}
			info, ok := p.AuthInfo.(credentials.TLSInfo)
			if !ok {
				t.Fatalf("RPC to %s was not over TLS: %T", version, p.AuthInfo)
			}
			uris := info.State.PeerCertificates[0].URIs
			if len(uris) != 1 || uris[0].String() != "spiffe://cluster.local/ns/default/sa/payments" {
				t.Fatalf("server identity = %v", uris)
			}
			return
		}
	}
	waitForVersion("v1")
	if err := cp.Apply(meshYAML(0, 100)); err != nil {
		t.Fatal(err)
	}
	waitForVersion("v2")
}

func writeBootstrap(t *testing.T, cp *controlplane.Server, w controlplane.Workload) []byte {
	t.Helper()
	path, err := cp.WriteBootstrap(filepath.Join(t.TempDir(), w.Name), w)
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

// serveXDS runs grpc-go's own xDS server, a health service, on 127.0.0.1
// with the bootstrap given: its address.
func serveXDS(t *testing.T, bootstrap []byte) string {
	t.Helper()
	creds, err := xdscreds.NewServerCredentials(xdscreds.ServerOptions{FallbackCreds: insecure.NewCredentials()})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := xds.NewGRPCServer(grpc.Creds(creds), xds.BootstrapContentsForTesting(bootstrap))
	if err != nil {
		t.Fatal(err)
	}
	healthpb.RegisterHealthServer(srv, health.NewServer())
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan struct{})
	go func() {
		defer close(served)
		srv.Serve(lis)
	}()
	t.Cleanup(func() {
		srv.Stop()
		<-served
	})
	return lis.Addr().String()
}

// dialXDS is grpc-go's own xDS client for target, with the bootstrap
// given and xDS credentials.
func dialXDS(t *testing.T, bootstrap []byte, target string) *grpc.ClientConn {
	t.Helper()
	resolverBuilder, err := xds.NewXDSResolverWithConfigForTesting(bootstrap)
	if err != nil {
		t.Fatal(err)
	}
	creds, err := xdscreds.NewClientCredentials(xdscreds.ClientOptions{FallbackCreds: insecure.NewCredentials()})
	if err != nil {
		t.Fatal(err)
	}
	conn, err := grpc.NewClient(target, grpc.WithResolvers(resolverBuilder), grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}
