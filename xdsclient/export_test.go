package xdsclient

// Names the package's own tests reach that its users need not.
const (
	MetricConnected       = metricConnected
	MetricResources       = metricResources
	MetricResourceUpdates = metricResourceUpdates
	MetricNACKs           = metricNACKs

	TypeURLSecret = typeURLSecret
)

var (
	CanonicalResourceName = canonicalResourceName
	DefaultBackoff        = defaultBackoff
)
