package mesh

import (
	"testing"
	"time"
)

func TestConnectionAgeIsAQuarterOfTheCertificateLifetime(t *testing.T) {
	for lifetime, want := range map[time.Duration]time.Duration{
		24 * time.Hour:   6 * time.Hour,
		time.Hour:        15 * time.Minute,
		2 * time.Second:  time.Second, // never below a second
		-1 * time.Second: time.Second,
	} {
		if got := connectionAgeFor(lifetime); got != want {
			t.Errorf("connectionAgeFor(%v) = %v, want %v", lifetime, got, want)
		}
	}
}
