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
	ErrStreamFailed        = errStreamFailed
	ErrResourceNotFound    = errResourceNotFound
	ErrUnknownAuthority    = errUnknownAuthority
	ErrInvalidResourceName = errInvalidResourceName

	CanonicalResourceName = canonicalResourceName
	DefaultBackoff        = defaultBackoff
)
