package benchmarks

import (
	"context"
	"fmt"
	"net"
	"runtime"
	"strconv"
	"syscall"
	"testing"
	"time"

	endpointpb "github.com/envoyproxy/go-control-plane/envoy/config/endpoint/v3"
	discoverypb "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	cachev3 "github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	deltav3 "github.com/envoyproxy/go-control-plane/pkg/server/delta/v3"
	"google.golang.org/grpc"

	"mesh/xdsclient"
	"mesh/xdsclient/xdstest"
)

// xdsWaitLimit bounds every wait in the xDS benchmarks, so a broken
// client fails the benchmark instead of hanging it.
const xdsWaitLimit = 60 * time.Second

// ingestClusters and ingestEndpointsPerCluster size the full-ingest
// benchmarks: 1,000 clusters of 10 endpoints each.
const (
	ingestClusters            = 1000
	ingestEndpointsPerCluster = 10
)

func benchClusterName(i int) string {
	return "outbound|8080||svc-" + strconv.Itoa(i) + ".bench.svc.cluster.local"
}

// benchEndpoints returns n endpoints on 10.x.y.z:port; salt changes the
// port so each call can make a new version.
func benchEndpoints(name string, n, salt int) *endpointpb.ClusterLoadAssignment {
	addrs := make([]string, n)
	for j := range n {
		addrs[j] = fmt.Sprintf("10.%d.%d.%d:%d", (j>>16)&0xff, (j>>8)&0xff, j&0xff, 8000+salt%1000)
	}
	return xdstest.Endpoints(name, addrs...)
}

// cpuTime is the process's user+system CPU time so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func heapAfterGC() uint64 {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return ms.HeapAlloc
}

// XDSIngestSotW measures one client ingesting 1,000 clusters and their
// 1,000 EDS resources (10 endpoints each) over a state-of-the-world ADS
// stream from a real go-control-plane server on loopback: from New to the
// last watcher callback. It reports the process CPU time per ingest
// (client and in-process server together) and the heap the client holds
// afterwards (after GC).
func XDSIngestSotW(b *testing.B) { xdsIngest(b, false) }

// XDSIngestDelta is XDSIngestSotW over a delta (incremental) ADS stream.
func XDSIngestDelta(b *testing.B) { xdsIngest(b, true) }

func xdsIngest(b *testing.B, delta bool) {
	srv := xdstest.NewServer(b)
	const node = "bench-ingest"
	clusters := make([]types.Resource, ingestClusters)
	endpoints := make([]types.Resource, ingestClusters)
	for i := range ingestClusters {
		clusters[i] = xdstest.EDSCluster(benchClusterName(i), false)
		endpoints[i] = benchEndpoints(benchClusterName(i), ingestEndpointsPerCluster, 0)
	}
	srv.SetResources(b, node, nil, nil, clusters, endpoints)
	bs := srv.Bootstrap(node)
	if delta {
		bs.Servers[0].ServerFeatures = []string{xdsclient.ServerFeatureDelta}
	}

	var cpu time.Duration
	var heap int64
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		heapBefore := heapAfterGC()
		cpuBefore := cpuTime()
		b.StartTimer()

		c, err := xdsclient.New(bs, xdsclient.WithResourceTimeout(0))
		if err != nil {
			b.Fatal(err)
		}
		done := make(chan struct{}, 2*ingestClusters)
		for j := range ingestClusters {
			name := benchClusterName(j)
			c.WatchCluster(name, func(ev xdsclient.Event[*xdsclient.Cluster]) {
				if ev.Err == nil && !ev.NotFound {
					done <- struct{}{}
				}
			})
			c.WatchEndpoints(name, func(ev xdsclient.Event[*xdsclient.Endpoints]) {
				if ev.Err == nil && !ev.NotFound {
					done <- struct{}{}
				}
			})
		}
		timeout := time.NewTimer(xdsWaitLimit)
		for range 2 * ingestClusters {
			select {
			case <-done:
			case <-timeout.C:
				b.Fatalf("ingest did not finish within %v", xdsWaitLimit)
			}
		}
		timeout.Stop()

		b.StopTimer()
		cpu += cpuTime() - cpuBefore
		heap += int64(heapAfterGC()) - int64(heapBefore)
		runtime.KeepAlive(c)
		_ = c.Close()
		b.StartTimer()
	}
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N), "cpu-ns/op")
	b.ReportMetric(float64(heap)/float64(b.N), "client-heap-B")
}

// XDSDeltaOneEndpointChange1k measures pushing one changed EDS resource
// over delta xDS to a client that watches 1,000 endpoints in total (100
// clusters of 10), from the server update to the watcher callback.
func XDSDeltaOneEndpointChange1k(b *testing.B) { xdsDeltaOneChange(b, 100) }

// XDSDeltaOneEndpointChange10k is XDSDeltaOneEndpointChange1k with 10,000
// endpoints watched (1,000 clusters of 10): with delta the cost of one
// change must not grow with the total.
func XDSDeltaOneEndpointChange10k(b *testing.B) { xdsDeltaOneChange(b, 1000) }

func xdsDeltaOneChange(b *testing.B, clusters int) {
	// A go-control-plane LinearCache updates one resource without
	// re-versioning the rest, as a real control plane's incremental path does.
	lc := cachev3.NewLinearCache(resource.EndpointType)
	initial := make(map[string]types.Resource, clusters)
	for i := range clusters {
		initial[benchClusterName(i)] = benchEndpoints(benchClusterName(i), ingestEndpointsPerCluster, 0)
	}
	lc.SetResources(initial)
	addr := serveDeltaADS(b, lc)

	bs := &xdsclient.Bootstrap{
		Node: xdsclient.Node{ID: "bench-delta"},
		Servers: []xdsclient.ServerConfig{{
			URI:            addr,
			ChannelCreds:   []xdsclient.ChannelCreds{{Type: xdsclient.CredsInsecure}},
			ServerFeatures: []string{xdsclient.ServerFeatureDelta},
		}},
	}
	c, err := xdsclient.New(bs, xdsclient.WithResourceTimeout(0))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = c.Close() })
	changed := make(chan int, 1)
	target := benchClusterName(0)
	watchIngest(b, c, clusters, target, func(eps *xdsclient.Endpoints) {
		_, portStr, _ := net.SplitHostPort(eps.Localities[0].Endpoints[0].Address)
		port, _ := strconv.Atoi(portStr)
		changed <- port
	})

	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		salt := i%999 + 1
		if err := lc.UpdateResource(target, benchEndpoints(target, ingestEndpointsPerCluster, salt)); err != nil {
			b.Fatal(err)
		}
		select {
		case port := <-changed:
			if port != 8000+salt {
				b.Fatalf("got port %d, want %d", port, 8000+salt)
			}
		case <-time.After(xdsWaitLimit):
			b.Fatal("update not delivered")
		}
	}
}

// serveDeltaADS serves delta ADS from cache on 127.0.0.1 until b ends.
func serveDeltaADS(b *testing.B, cache cachev3.Cache) string {
	return serveADS(b, deltaOnlyADS{delta: deltav3.NewServer(context.Background(), cache, nil)})
}

type deltaOnlyADS struct {
	discoverypb.UnimplementedAggregatedDiscoveryServiceServer
	delta deltav3.Server
}

func (d deltaOnlyADS) DeltaAggregatedResources(stream discoverypb.AggregatedDiscoveryService_DeltaAggregatedResourcesServer) error {
	return d.delta.DeltaStreamHandler(stream, resource.AnyType)
}

// XDSDeltaClientOneChange1k isolates the client's side of one delta
// change among 1,000 watched endpoints: the server is a scripted delta
// stream that replays a prepared one-resource response, so its own cost
// is constant and any growth with the total would be the client's.
func XDSDeltaClientOneChange1k(b *testing.B) { xdsDeltaClientOneChange(b, 100) }

// XDSDeltaClientOneChange10k is XDSDeltaClientOneChange1k with 10,000
// watched endpoints.
func XDSDeltaClientOneChange10k(b *testing.B) { xdsDeltaClientOneChange(b, 1000) }

func xdsDeltaClientOneChange(b *testing.B, clusters int) {
	initial := &discoverypb.DeltaDiscoveryResponse{TypeUrl: resource.EndpointType, Nonce: "initial"}
	for i := range clusters {
		name := benchClusterName(i)
		initial.Resources = append(initial.Resources, &discoverypb.Resource{
			Name: name, Version: "0", Resource: xdstest.MustAny(benchEndpoints(name, ingestEndpointsPerCluster, 0)),
		})
	}
	target := benchClusterName(0)
	var pushes [2]*discoverypb.DeltaDiscoveryResponse
	for i := range pushes {
		pushes[i] = &discoverypb.DeltaDiscoveryResponse{TypeUrl: resource.EndpointType, Resources: []*discoverypb.Resource{{
			Name: target, Version: strconv.Itoa(i + 1), Resource: xdstest.MustAny(benchEndpoints(target, ingestEndpointsPerCluster, i+1)),
		}}}
	}
	script := &scriptedDeltaADS{subscriptions: clusters, initial: initial, pushes: make(chan *discoverypb.DeltaDiscoveryResponse)}
	addr := serveADS(b, script)

	bs := &xdsclient.Bootstrap{
		Node: xdsclient.Node{ID: "bench-delta-client"},
		Servers: []xdsclient.ServerConfig{{
			URI:            addr,
			ChannelCreds:   []xdsclient.ChannelCreds{{Type: xdsclient.CredsInsecure}},
			ServerFeatures: []string{xdsclient.ServerFeatureDelta},
		}},
	}
	c, err := xdsclient.New(bs, xdsclient.WithResourceTimeout(0))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = c.Close() })
	changed := make(chan struct{}, 1)
	watchIngest(b, c, clusters, target, func(*xdsclient.Endpoints) { changed <- struct{}{} })
	ctx, cancel := context.WithTimeout(context.Background(), xdsWaitLimit)
	defer cancel()

	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		push := pushes[i%2]
		push.Nonce = strconv.Itoa(i)
		select {
		case script.pushes <- push:
		case <-ctx.Done():
			b.Fatal("stream gone")
		}
		select {
		case <-changed:
		case <-ctx.Done():
			b.Fatal("update not delivered")
		}
	}
}

// scriptedDeltaADS answers a delta stream with a prepared response once
// the client has subscribed to the expected number of names, then sends
// whatever arrives on pushes; ACKs are read and dropped.
type scriptedDeltaADS struct {
	discoverypb.UnimplementedAggregatedDiscoveryServiceServer
	subscriptions int
	initial       *discoverypb.DeltaDiscoveryResponse
	pushes        chan *discoverypb.DeltaDiscoveryResponse
}

func (s *scriptedDeltaADS) DeltaAggregatedResources(stream discoverypb.AggregatedDiscoveryService_DeltaAggregatedResourcesServer) error {
	for subscribed := 0; subscribed < s.subscriptions; {
		req, err := stream.Recv()
		if err != nil {
			return err
		}
		subscribed += len(req.GetResourceNamesSubscribe())
	}
	if err := stream.Send(s.initial); err != nil {
		return err
	}
	recvDone := make(chan error, 1)
	go func() {
		for {
			if _, err := stream.Recv(); err != nil {
				recvDone <- err
				return
			}
		}
	}()
	for {
		select {
		case resp := <-s.pushes:
			if err := stream.Send(resp); err != nil {
				return err
			}
		case err := <-recvDone:
			return err
		}
	}
}

// serveADS serves ads on 127.0.0.1 until b ends.
func serveADS(b *testing.B, ads discoverypb.AggregatedDiscoveryServiceServer) string {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	gs := grpc.NewServer()
	discoverypb.RegisterAggregatedDiscoveryServiceServer(gs, ads)
	served := make(chan struct{})
	go func() { defer close(served); _ = gs.Serve(lis) }()
	b.Cleanup(func() { gs.Stop(); <-served })
	return lis.Addr().String()
}

// XDSSotWOneEndpointChange1k is the state-of-the-world counterpart of
// XDSDeltaOneEndpointChange1k: one EDS resource changes among 1,000
// watched endpoints, and the server resends every watched EDS resource.
func XDSSotWOneEndpointChange1k(b *testing.B) { xdsSotWOneChange(b, 100) }

// XDSSotWOneEndpointChange10k is XDSSotWOneEndpointChange1k with 10,000
// watched endpoints.
func XDSSotWOneEndpointChange10k(b *testing.B) { xdsSotWOneChange(b, 1000) }

func xdsSotWOneChange(b *testing.B, clusters int) {
	srv := xdstest.NewServer(b)
	const node = "bench-sotw-change"
	endpoints := make([]types.Resource, clusters)
	for i := range clusters {
		endpoints[i] = benchEndpoints(benchClusterName(i), ingestEndpointsPerCluster, 0)
	}
	srv.SetResources(b, node, nil, nil, nil, endpoints)
	c, err := xdsclient.New(srv.Bootstrap(node), xdsclient.WithResourceTimeout(0))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = c.Close() })
	target := benchClusterName(0)
	changed := make(chan struct{}, 1)
	watchIngest(b, c, clusters, target, func(*xdsclient.Endpoints) { changed <- struct{}{} })
	ctx, cancel := context.WithTimeout(context.Background(), xdsWaitLimit)
	defer cancel()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		endpoints[0] = benchEndpoints(target, ingestEndpointsPerCluster, i%999+1)
		srv.SetResources(b, node, nil, nil, nil, endpoints)
		select {
		case <-changed:
		case <-ctx.Done():
			b.Fatal("update not delivered")
		}
	}
}

// watchIngest watches the endpoints of the first clusters benchmark
// clusters on c and waits until each has arrived once; later updates of
// target go to onChange, on the client's callback goroutine.
func watchIngest(b *testing.B, c *xdsclient.Client, clusters int, target string, onChange func(*xdsclient.Endpoints)) {
	b.Helper()
	initialDone := make(chan struct{}, clusters)
	for i := range clusters {
		name := benchClusterName(i)
		first := true
		c.WatchEndpoints(name, func(ev xdsclient.Event[*xdsclient.Endpoints]) {
			if ev.Err != nil || ev.NotFound {
				return
			}
			if first {
				first = false
				initialDone <- struct{}{}
				return
			}
			if name == target {
				onChange(ev.Resource)
			}
		})
	}
	ctx, cancel := context.WithTimeout(context.Background(), xdsWaitLimit)
	defer cancel()
	for range clusters {
		select {
		case <-initialDone:
		case <-ctx.Done():
			b.Fatal("initial ingest timed out")
		}
	}
}
