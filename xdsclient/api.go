package xdsclient

// Event is what a watcher receives about one resource. Exactly one of the
// three cases holds:
//   - Err == nil && !NotFound: Resource is a new valid version;
//   - Err != nil: a NACK of this resource or a stream problem; the last good
//     Resource (already delivered) stays in force;
//   - NotFound: the control plane says the resource does not exist; drop it.
type Event[T any] struct {
	Resource T
	Err      error
	NotFound bool
}

// The watch API of *Client. Callbacks are delivered in order, one at a time,
// from a goroutine owned by the Client, never while a Client lock is held:
// a callback may call Watch* or cancel. A watch added after a resource has
// arrived gets the cached version at once. cancel is idempotent.
//
//	func (c *Client) WatchListener(name string, fn func(Event[*Listener])) (cancel func())
//	func (c *Client) WatchRouteConfig(name string, fn func(Event[*RouteConfig])) (cancel func())
//	func (c *Client) WatchCluster(name string, fn func(Event[*Cluster])) (cancel func())
//	func (c *Client) WatchEndpoints(name string, fn func(Event[*Endpoints])) (cancel func())
