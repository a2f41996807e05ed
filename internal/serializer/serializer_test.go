package serializer

import (
	"sync/atomic"
	"testing"
)

func TestCallbacksRunInOrderThenAfterBatch(t *testing.T) {
	var order []int
	var after atomic.Int64
	done := make(chan struct{})
	s := New(func() {
		after.Add(1)
		if len(order) == 100 {
			select {
			case <-done:
			default:
				close(done)
			}
		}
	})
	for i := range 100 {
		s.Schedule(func() { order = append(order, i) })
	}
	<-done
	s.Close()
	for i, v := range order {
		if v != i {
			t.Fatalf("callback %d ran at position %d", v, i)
		}
	}
	if after.Load() == 0 {
		t.Error("afterBatch never ran")
	}
}

func TestScheduleAfterCloseIsDropped(t *testing.T) {
	s := New(nil)
	s.Close()
	ran := false
	s.Schedule(func() { ran = true })
	s.Close() // a second Close returns too
	if ran {
		t.Error("a callback scheduled after Close ran")
	}
}
