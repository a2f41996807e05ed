package identity_test

import (
	"context"
	"fmt"
	"log"
	"log/slog"
	"os"
	"time"

	"mesh/controlplane"
	"mesh/identity"
	"mesh/xdsclient"
)

// An SDS source takes the workload's SVID and roots from secrets the
// control plane pushes on the xDS stream; each push rotates the next
// handshake's certificate.
func ExampleNewSDSSource() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cp, err := controlplane.New(ctx, controlplane.WithSDS(true))
	if err != nil {
		log.Fatal(err)
	}
	defer cp.Close()
	// The bootstrap's directory holds the enrollment token and the CA's
	// root, with which the xDS stream is authenticated over TLS.
	dir, err := os.MkdirTemp("", "sds-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	path, err := cp.WriteBootstrap(dir, controlplane.Workload{Name: "checkout-1", ServiceAccount: "checkout"})
	if err != nil {
		log.Fatal(err)
	}
	bs, err := xdsclient.LoadBootstrapFile(path)
	if err != nil {
		log.Fatal(err)
	}
	client, err := xdsclient.New(bs, xdsclient.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		log.Fatal(err)
	}
	defer client.Close()

	src, err := identity.NewSDSSource(ctx, client, "default", "ROOTCA", identity.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		log.Fatal(err)
	}
	defer src.Close()
	svid, err := src.GetX509SVID()
	if err != nil {
		log.Fatal(err)
	}
	bundle, err := src.GetX509BundleForTrustDomain(svid.ID.TrustDomain())
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(svid.ID)
	fmt.Println(len(bundle.X509Authorities()), "root")
	// Output:
	// spiffe://cluster.local/ns/default/sa/checkout
	// 1 root
}
