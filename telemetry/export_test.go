package telemetry

import "time"

// WithClock lets tests replace time.Now, so durations are exact.
func WithClock(now func() time.Time) Option { return withClock(now) }
