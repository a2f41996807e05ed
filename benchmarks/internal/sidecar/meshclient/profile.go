//go:build leanprofile

package main

import (
	"os"
	"path/filepath"
	"runtime"
	"runtime/pprof"
)

// writeProfiles writes the goroutine profile (debug=2: with who created each) and, after a GC,
// the heap profile to $MESH_CLIENT_PROFILE, if set.
func writeProfiles() error {
	dir := os.Getenv("MESH_CLIENT_PROFILE")
	if dir == "" {
		return nil
	}
	g, err := os.Create(filepath.Join(dir, "goroutines.txt"))
	if err != nil {
		return err
	}
	defer g.Close()
	if err := pprof.Lookup("goroutine").WriteTo(g, 2); err != nil {
		return err
	}
	h, err := os.Create(filepath.Join(dir, "heap.pprof"))
	if err != nil {
		return err
	}
	defer h.Close()
	runtime.GC()
	return pprof.Lookup("heap").WriteTo(h, 0)
}
