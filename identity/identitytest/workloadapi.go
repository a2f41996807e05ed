package identitytest

import (
	"errors"
	"fmt"
	"net"
	"sync"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	workloadpb "github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
)

// WorkloadAPI is a SPIFFE Workload API server standing in for a SPIRE
// agent: it serves FetchX509SVID on a unix socket and sends every open
// stream the SVID last pushed. The other Workload API methods answer
// Unimplemented. Close stops it.
type WorkloadAPI struct {
	workloadpb.UnimplementedSpiffeWorkloadAPIServer

	path   string
	server *grpc.Server
	served chan struct{}
	once   sync.Once

	mu      sync.Mutex
	resp    *workloadpb.X509SVIDResponse
	refuse  error
	changed chan struct{} // closed and replaced at every change
}

// NewWorkloadAPI listens on the unix socket socketPath (keep it short: the
// limit is about 100 bytes) and serves until Close.
func NewWorkloadAPI(socketPath string) (*WorkloadAPI, error) {
	lis, err := net.Listen("unix", socketPath)
	if err != nil {
		return nil, fmt.Errorf("identitytest: workload api: %w", err)
	}
	w := &WorkloadAPI{
		path:    socketPath,
		server:  grpc.NewServer(),
		served:  make(chan struct{}),
		changed: make(chan struct{}),
	}
	workloadpb.RegisterSpiffeWorkloadAPIServer(w.server, w)
	go func() {
		defer close(w.served)
		_ = w.server.Serve(lis)
	}()
	return w, nil
}

// Addr is the server's address for workloadapi.NewSource:
// "unix:///path".
func (w *WorkloadAPI) Addr() string { return "unix://" + w.path }

// Push sends svid with the bundle of its trust domain and any federated
// bundles to every stream, open now or later.
func (w *WorkloadAPI) Push(svid *x509svid.SVID, bundle *x509bundle.Bundle, federated ...*x509bundle.Bundle) error {
	if svid == nil || bundle == nil {
		return errors.New("identitytest: workload api: Push needs an SVID and its bundle")
	}
	certs, key, err := svid.MarshalRaw()
	if err != nil {
		return fmt.Errorf("identitytest: workload api: encoding %s: %w", svid.ID, err)
	}
	resp := &workloadpb.X509SVIDResponse{
		Svids: []*workloadpb.X509SVID{{
			SpiffeId:    svid.ID.String(),
			X509Svid:    certs,
			X509SvidKey: key,
			Bundle:      concatRaw(bundle),
		}},
		FederatedBundles: map[string][]byte{},
	}
	for _, b := range federated {
		resp.FederatedBundles[b.TrustDomain().IDString()] = concatRaw(b)
	}
	w.PushResponse(resp)
	return nil
}

// PushResponse sends resp as it is, valid or not, to every stream.
func (w *WorkloadAPI) PushResponse(resp *workloadpb.X509SVIDResponse) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.resp = resp
	w.changedLocked()
}

// Refuse ends every open stream with err (a gRPC status error, such as
// PermissionDenied, which an agent sends a workload it has no identity
// for) and refuses new ones with it. Refuse(nil) serves again.
func (w *WorkloadAPI) Refuse(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.refuse = err
	w.changedLocked()
}

func (w *WorkloadAPI) changedLocked() {
	close(w.changed)
	w.changed = make(chan struct{})
}

// Close stops the server, ending every stream, and waits for it.
func (w *WorkloadAPI) Close() error {
	w.once.Do(func() {
		w.server.Stop()
		<-w.served
	})
	return nil
}

// FetchX509SVID implements the Workload API's X.509 stream.
func (w *WorkloadAPI) FetchX509SVID(_ *workloadpb.X509SVIDRequest, stream grpc.ServerStreamingServer[workloadpb.X509SVIDResponse]) error {
	md, _ := metadata.FromIncomingContext(stream.Context())
	if v := md.Get("workload.spiffe.io"); len(v) != 1 || v[0] != "true" {
		return status.Error(codes.InvalidArgument, "security header missing from request")
	}
	var sent *workloadpb.X509SVIDResponse
	for {
		w.mu.Lock()
		resp, refuse, changed := w.resp, w.refuse, w.changed
		w.mu.Unlock()
		if refuse != nil {
			return refuse
		}
		if resp != nil && resp != sent {
			if err := stream.Send(resp); err != nil {
				return err
			}
			sent = resp
		}
		select {
		case <-changed:
		case <-stream.Context().Done():
			return nil
		}
	}
}

func concatRaw(b *x509bundle.Bundle) []byte {
	var out []byte
	for _, c := range b.X509Authorities() {
		out = append(out, c.Raw...)
	}
	return out
}
