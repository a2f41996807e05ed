package controlplane

import "time"

// WithFileCheckInterval lets tests see a config file change within
// milliseconds instead of the default second.
func WithFileCheckInterval(d time.Duration) Option { return withFileCheckInterval(d) }
