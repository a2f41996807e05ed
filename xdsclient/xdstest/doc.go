// Package xdstest runs a real go-control-plane ADS server on 127.0.0.1 for
// tests, the way net/http/httptest runs an HTTP server, and builds typical
// xDS resources. It is test support: unlike package xdsclient it exposes
// Envoy protos.
//
//	srv := xdstest.NewServer(t) // stopped in t.Cleanup
//	srv.SetResources(t, "node-1",
//		[]types.Resource{xdstest.ClientListener("svc:80", "route-1")},
//		[]types.Resource{xdstest.RouteConfig("route-1", "svc", xdsclient.ClusterWeight{Name: "c1", Weight: 1})},
//		[]types.Resource{xdstest.EDSCluster("c1", false)},
//		[]types.Resource{xdstest.Endpoints("c1", "127.0.0.1:8080")},
//	)
//	client, err := xdsclient.New(srv.Bootstrap("node-1"))
package xdstest
