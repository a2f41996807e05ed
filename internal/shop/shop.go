// Package shop holds test-only helpers around the example workloads of
// mesh/examples/shop: a whole example mesh started for one test
// (StartWorld), an HTTP web service, bootstrap loading. The example code
// itself lives in mesh/examples/shop; the names below forward to it so
// tests read shop.Charge either way.
package shop

import (
	"context"

	"google.golang.org/grpc"

	"mesh/controlplane"
	exshop "mesh/examples/shop"
)

// Names of the example service and mesh; see mesh/examples/shop.
const (
	ServiceName    = exshop.ServiceName
	ChargeMethod   = exshop.ChargeMethod
	PaymentsHost   = exshop.PaymentsHost
	PaymentsPort   = exshop.PaymentsPort
	PaymentsTarget = exshop.PaymentsTarget
	WebHost        = exshop.WebHost
	WebURL         = exshop.WebURL
)

type (
	// Payments is exshop.Payments.
	Payments = exshop.Payments
	// Reply is exshop.Reply.
	Reply = exshop.Reply
	// Tally is exshop.Tally.
	Tally = exshop.Tally
)

// Charge is exshop.Charge.
func Charge(ctx context.Context, conn grpc.ClientConnInterface) (Reply, error) {
	return exshop.Charge(ctx, conn)
}

// Run is exshop.Run.
func Run(ctx context.Context, conn grpc.ClientConnInterface, n, workers int) *Tally {
	return exshop.Run(ctx, conn, n, workers)
}

// WaitFor is exshop.WaitFor.
func WaitFor(ctx context.Context, conn grpc.ClientConnInterface, streak int, ok func(Reply) bool) error {
	return exshop.WaitFor(ctx, conn, streak, ok)
}

// MeshYAML is exshop.MeshYAML.
func MeshYAML(v1Weight, v2Weight int) []byte { return exshop.MeshYAML(v1Weight, v2Weight) }

// SplitYAML is exshop.SplitYAML.
func SplitYAML(host string, v1Weight, v2Weight int) []byte {
	return exshop.SplitYAML(host, v1Weight, v2Weight)
}

// WebYAML is exshop.WebYAML.
func WebYAML(v1Weight, v2Weight int) []byte { return exshop.WebYAML(v1Weight, v2Weight) }

// Workloads is exshop.Workloads.
func Workloads() []controlplane.Workload { return exshop.Workloads() }
