package mesh

// StreamWorkers lets the external tests check the server's worker count.
var StreamWorkers = streamWorkers
