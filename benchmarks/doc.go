// Package benchmarks measures mesh side by side with plain grpc-go, in one
// run, so results are ratios rather than absolute times that depend on the
// machine. The benchmark bodies are exported so that both `go test -bench`
// and the compare command (go run ./benchmarks/compare), which prints the
// ratio table kept in README.md, run the same code.
package benchmarks
