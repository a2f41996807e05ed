package controlplane

import (
	"fmt"

	listener "github.com/envoyproxy/go-control-plane/envoy/config/listener/v3"
	hcm "github.com/envoyproxy/go-control-plane/envoy/extensions/filters/network/http_connection_manager/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
)

// checkConsistent is snapshot.Consistent() extended to API listeners:
// go-control-plane collects route names only from filter chains, so it
// reports every proxyless gRPC snapshot (whose client listeners are API
// listeners) as inconsistent. As Consistent does, it requires the route
// and endpoint resources to be exactly the ones referenced.
func checkConsistent(snap *cache.Snapshot) error {
	refs := cache.GetAllResourceReferences(snap.Resources)
	routes := map[string]bool{}
	for name := range refs[resource.RouteType] {
		routes[name] = true
	}
	for _, item := range snap.Resources[types.Listener].Items {
		l, ok := item.Resource.(*listener.Listener)
		if !ok || l.GetApiListener() == nil {
			continue
		}
		var manager hcm.HttpConnectionManager
		if err := l.GetApiListener().GetApiListener().UnmarshalTo(&manager); err != nil {
			return fmt.Errorf("listener %s: api_listener: %w", l.GetName(), err)
		}
		if name := manager.GetRds().GetRouteConfigName(); name != "" {
			routes[name] = true
		}
	}
	check := func(kind string, want map[string]bool, got map[string]types.ResourceWithTTL) error {
		for name := range want {
			if _, ok := got[name]; !ok {
				return fmt.Errorf("%s %q is referenced but missing", kind, name)
			}
		}
		for name := range got {
			if !want[name] {
				return fmt.Errorf("%s %q is not referenced", kind, name)
			}
		}
		return nil
	}
	if err := check("route", routes, snap.Resources[types.Route].Items); err != nil {
		return err
	}
	return check("endpoint", refs[resource.EndpointType], snap.Resources[types.Endpoint].Items)
}
