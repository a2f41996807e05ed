package admin_test

import (
	"context"
	"io"
	"log"
	"net/http"

	"mesh"
	"mesh/admin"
)

// Serve a workload's admin pages on a private port, beside its mesh.
func ExampleServe() {
	ctx := context.Background()
	m, err := mesh.New(ctx) // bootstrap from MESH_BOOTSTRAP
	if err != nil {
		log.Fatal(err)
	}
	defer m.Close()
	metrics := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "# registry\n") })
	srv, err := admin.Serve(m, "127.0.0.1:15000", metrics)
	if err != nil {
		log.Fatal(err)
	}
	defer srv.Close() // before m.Close
	log.Println("admin pages on", srv.Addr())
}

// Mount the pages on a server of your own, under /admin/.
func ExampleHandler() {
	var m *mesh.Mesh // from mesh.New
	mux := http.NewServeMux()
	mux.Handle("/admin/", http.StripPrefix("/admin", admin.Handler(m, nil)))
}
