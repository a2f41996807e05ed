package xdsclient

import "slices"

// Server features (xds_servers[].server_features) the client honours.
const (
	// ServerFeatureDelta selects the incremental (delta) ADS protocol for
	// that server instead of state of the world. It is mesh's own feature
	// name: the bootstrap says per server which protocol it speaks, so a
	// delta primary and a state-of-the-world fallback mix freely.
	ServerFeatureDelta = "delta"
	// ServerFeatureIgnoreResourceDeletion (gRFC A53) keeps serving a
	// listener or cluster the server deletes, logging the deletion instead
	// of reporting NotFound. Route configurations and endpoints are
	// deleted as usual.
	ServerFeatureIgnoreResourceDeletion = "ignore_resource_deletion"
)

func (s ServerConfig) hasFeature(f string) bool { return slices.Contains(s.ServerFeatures, f) }
