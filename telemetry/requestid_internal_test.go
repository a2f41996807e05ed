package telemetry

import (
	"regexp"
	"sync"
	"testing"
)

var uuidV4 = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)

// TestRequestIDSourceMakesDistinctUUIDs: IDs cut from batches, by several
// goroutines at once, are version 4 UUIDs and never repeat.
func TestRequestIDSourceMakesDistinctUUIDs(t *testing.T) {
	var src requestIDSource
	const goroutines, each = 4, 5 * requestIDsPerBatch
	ids := make([][]string, goroutines)
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				ids[g] = append(ids[g], src.next())
			}
		}()
	}
	wg.Wait()
	seen := map[string]bool{}
	for _, list := range ids {
		for _, id := range list {
			if !uuidV4.MatchString(id) {
				t.Fatalf("request ID %q is not a version 4 UUID", id)
			}
			if seen[id] {
				t.Fatalf("request ID %q made twice", id)
			}
			seen[id] = true
		}
	}
	if len(seen) != goroutines*each {
		t.Errorf("%d distinct IDs, want %d", len(seen), goroutines*each)
	}
}
