//go:build !leanprofile

package main

// writeProfiles does nothing: runtime/pprof stays out of the binary whose
// size is measured.
func writeProfiles() error { return nil }
