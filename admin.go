package mesh

import (
	"errors"
	"fmt"
	"net"
	"net/http"

	"mesh/internal/admin"
)

// AdminHandler returns the mesh's admin pages (see WithAdmin) for mounting
// on a server of your own.
func (m *Mesh) AdminHandler(metrics http.Handler) http.Handler {
	return admin.NewHandler(admin.Config{
		Metrics: metrics,
		XDS:     m.xds.Dump,
		Healthy: func() error {
			if m.isClosed() {
				return ErrClosed
			}
			return nil
		},
		Logger: m.logger,
	})
}

// AdminAddr returns the address the admin pages are served on, or "" when
// WithAdmin was not given.
func (m *Mesh) AdminAddr() string { return m.adminAddr }

// serveAdmin starts the admin listener; Close stops it and waits.
func (m *Mesh) serveAdmin(addr string, metrics http.Handler) error {
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("admin listener: %w", err)
	}
	m.adminAddr = lis.Addr().String()
	srv := &http.Server{Handler: m.AdminHandler(metrics)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := srv.Serve(lis); !errors.Is(err, http.ErrServerClosed) {
			m.logger.Error("admin listener stopped", "address", m.adminAddr, "error", err)
		}
	}()
	m.closers = append(m.closers, func() error {
		err := srv.Close()
		<-done
		return err
	})
	return nil
}
