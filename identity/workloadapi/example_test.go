package workloadapi_test

import (
	"context"
	"fmt"
	"log"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"mesh/identity/identitytest"
	"mesh/identity/workloadapi"
)

func ExampleNewSource() {
	// A stand-in for the SPIRE agent; in production the address is the
	// agent's socket, or "" to read $SPIFFE_ENDPOINT_SOCKET.
	ca, _ := identitytest.NewCA("example.org")
	dir, _ := os.MkdirTemp("", "spire")
	defer os.RemoveAll(dir)
	agent, err := identitytest.NewWorkloadAPI(filepath.Join(dir, "agent.sock"))
	if err != nil {
		log.Fatal(err)
	}
	defer agent.Close()
	svid, _ := ca.Issue("spiffe://example.org/ns/default/sa/payments", time.Hour)
	if err := agent.Push(svid, ca.Bundle()); err != nil {
		log.Fatal(err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	src, err := workloadapi.NewSource(ctx, agent.Addr(), workloadapi.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		log.Fatal(err) // names the socket and the last failure, e.g. PermissionDenied
	}
	defer src.Close()

	// Take the channel before the agent rotates, so the push cannot be missed.
	updated := src.Updated()
	rotated, _ := ca.Issue("spiffe://example.org/ns/default/sa/payments", time.Hour)
	_ = agent.Push(rotated, ca.Bundle())
	<-updated

	current, _ := src.GetX509SVID()
	fmt.Println(current.ID, current.Certificates[0].SerialNumber.Cmp(rotated.Certificates[0].SerialNumber) == 0)
	// Output: spiffe://example.org/ns/default/sa/payments true
}
