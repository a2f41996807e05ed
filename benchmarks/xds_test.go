package benchmarks

import "testing"

// BenchmarkXDSIngestSotW: 1,000 clusters x 10 endpoints, state of the world.
func BenchmarkXDSIngestSotW(b *testing.B) { XDSIngestSotW(b) }

// BenchmarkXDSIngestDelta: the same ingest over delta xDS.
func BenchmarkXDSIngestDelta(b *testing.B) { XDSIngestDelta(b) }

// BenchmarkXDSDeltaOneEndpointChange1k: one EDS change among 1,000 endpoints.
func BenchmarkXDSDeltaOneEndpointChange1k(b *testing.B) { XDSDeltaOneEndpointChange1k(b) }

// BenchmarkXDSDeltaOneEndpointChange10k: one EDS change among 10,000 endpoints.
func BenchmarkXDSDeltaOneEndpointChange10k(b *testing.B) { XDSDeltaOneEndpointChange10k(b) }

// BenchmarkXDSDeltaClientOneChange1k: the client's share of one change among 1,000 endpoints.
func BenchmarkXDSDeltaClientOneChange1k(b *testing.B) { XDSDeltaClientOneChange1k(b) }

// BenchmarkXDSDeltaClientOneChange10k: the client's share of one change among 10,000 endpoints.
func BenchmarkXDSDeltaClientOneChange10k(b *testing.B) { XDSDeltaClientOneChange10k(b) }

// BenchmarkXDSSotWOneEndpointChange1k: one EDS change among 1,000 endpoints, state of the world.
func BenchmarkXDSSotWOneEndpointChange1k(b *testing.B) { XDSSotWOneEndpointChange1k(b) }

// BenchmarkXDSSotWOneEndpointChange10k: one EDS change among 10,000 endpoints, state of the world.
func BenchmarkXDSSotWOneEndpointChange10k(b *testing.B) { XDSSotWOneEndpointChange10k(b) }
