// Package roles is the processes benchmarks/sidecar measures: the echo
// server and client of each variant (plain grpc-go with mTLS, grpc-go with
// its OpenTelemetry plugin, mesh with everything on or with no-op
// telemetry). Their program, ./role, links only what such a service links:
// not the harness, whose control plane would put Envoy's descriptors in
// every process's live heap and so make every variant collect garbage
// more often than its own service would.
//
//	func main() {
//		if !roles.Main() {
//			os.Exit(2) // not started by the harness
//		}
//	}
//
// The harness starts the program with Env set to "server" or "client" and
// Env + "_ARGS" to its flags; a server prints "ready <addr>", a client
// "ready", then answers each load phase its standard input asks for with a
// PhaseResult.
package roles
