// Package istiodinterop runs mesh's clients and servers against istiod
// itself: istio's in-process discovery server (pilot/test/xds), with the
// proxyless "grpc" generator istio-agent selects for gRPC workloads, fed
// Kubernetes objects and Istio YAML, serving xDS on a 127.0.0.1 port.
//
// It is a module of its own so that istio.io/istio, a very large build,
// never enters mesh's. Run it from this directory with `go test ./...`.
package istiodinterop

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"istio.io/istio/pilot/pkg/config/kube/crd"
	v3 "istio.io/istio/pilot/pkg/xds/v3"
	istioxds "istio.io/istio/pilot/test/xds"
	istiolog "istio.io/istio/pkg/log"

	"mesh"
	"mesh/identity/identitytest"
	"mesh/internal/leakcheck"
	"mesh/internal/shop"
	"mesh/xdsclient"
)

// istiodLog is where istiod's own log goes: its delta scope at debug
// level, so that a test can look for what istiod says of mesh's requests.
var istiodLog string

func TestMain(m *testing.M) { os.Exit(run(m)) }

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "istiodinterop")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	istiodLog = filepath.Join(dir, "istiod.log")
	o := istiolog.DefaultOptions()
	o.OutputPaths = []string{istiodLog}
	o.ErrorOutputPaths = []string{istiodLog}
	o.SetDefaultOutputLevel("delta", istiolog.DebugLevel)
	if err := istiolog.Configure(o); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	code := m.Run()
	// Only mesh's goroutines are checked, by the function names that open
	// a stack line (istio has packages named mesh too); istiod's
	// informers are not ours to stop.
	if code == 0 {
		if err := leakcheck.Wait(leakcheck.Grace, "\nmesh/", "\nmesh.", "created by mesh"); err != nil {
			fmt.Fprintln(os.Stderr, err)
			code = 1
		}
	}
	if code == 0 {
		os.RemoveAll(dir)
	} else {
		fmt.Fprintf(os.Stderr, "istiod's log: %s\n", istiodLog)
	}
	return code
}

// podIP is each workload's address: all loopback, one per pod.
var podIP = map[string]string{"checkout": "127.0.0.1", "v1": "127.0.0.2", "v2": "127.0.0.3"}

const (
	namespace   = "default"
	paymentsFQN = "payments.default.svc.cluster.local"
	target      = paymentsFQN + ":8080"
	// inboundTemplate is istio-agent's server listener name template.
	inboundTemplate = "xds.istio.io/grpc/lds/inbound/%s"
)

// kubeObjects is what Kubernetes would hold for payments v1 and v2 and
// checkout: a Service whose target port is named, pods that name it on
// their own ports, and the EndpointSlices the endpoints controller would
// write. Each pod has a loopback address of its own (podIP): istiod
// merges a service's endpoints that share an address and port name.
func kubeObjects(ports map[string]int) string {
	var b strings.Builder
	b.WriteString(`apiVersion: v1
kind: Service
metadata: {name: payments, namespace: default}
spec:
  clusterIP: 10.96.0.10
  selector: {app: payments}
  ports:
  - {name: grpc, port: 8080, targetPort: grpc, protocol: TCP}
---
apiVersion: v1
kind: Pod
metadata: {name: checkout-0, namespace: default, labels: {app: checkout}}
spec:
  serviceAccountName: checkout
  containers: [{name: checkout, image: checkout}]
status:
  phase: Running
  podIP: 127.0.0.1
  podIPs: [{ip: 127.0.0.1}]
  conditions: [{type: Ready, status: "True"}]
`)
	for _, v := range []string{"v1", "v2"} {
		fmt.Fprintf(&b, `---
apiVersion: v1
kind: Pod
metadata: {name: payments-%[1]s, namespace: default, labels: {app: payments, version: %[1]s}}
spec:
  serviceAccountName: payments
  containers:
  - name: payments
    image: payments
    ports: [{name: grpc, containerPort: %[2]d, protocol: TCP}]
status:
  phase: Running
  podIP: %[3]s
  podIPs: [{ip: %[3]s}]
  conditions: [{type: Ready, status: "True"}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: payments-%[1]s
  namespace: default
  labels: {kubernetes.io/service-name: payments}
addressType: IPv4
ports: [{name: grpc, port: %[2]d, protocol: TCP}]
endpoints:
- addresses: [%[3]s]
  conditions: {ready: true}
  targetRef: {kind: Pod, name: payments-%[1]s, namespace: default}
`, v, ports[v], podIP[v])
	}
	return b.String()
}

// policyYAML is the mesh's Istio config: STRICT mTLS for the namespace
// and the payments subsets over ISTIO_MUTUAL (istiod's grpc generator
// sets client TLS only when a DestinationRule asks for it).
const policyYAML = `apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: default}
spec: {mtls: {mode: STRICT}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: payments, namespace: default}
spec:
  host: payments.default.svc.cluster.local
  trafficPolicy: {tls: {mode: ISTIO_MUTUAL}}
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
`

// splitYAML routes payments to its subsets by weight. Istio leaves a
// zero-weight destination out of the route, so a 0/100 split makes a
// client drop v1's cluster and endpoints, and 90/10 brings them back.
func splitYAML(v1, v2 int) string {
	return fmt.Sprintf(`apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: payments, namespace: default}
spec:
  hosts: [payments.default.svc.cluster.local]
  http:
  - route:
    - destination: {host: payments.default.svc.cluster.local, subset: v1}
      weight: %d
    - destination: {host: payments.default.svc.cluster.local, subset: v2}
      weight: %d
`, v1, v2)
}

// world is istiod, payments v1 and v2 served by mesh gRPC servers, and a
// mesh client (checkout) dialing payments.
type world struct {
	istiod   *istioxds.FakeDiscoveryServer
	checkout *mesh.Mesh
	conn     *grpc.ClientConn
	payments map[string]net.Addr
	delta    bool
	// logMark is where istiod's log stood when the world started.
	logMark int64
}

func testContext(t *testing.T) context.Context {
	// A hang guard only; nothing here is timed.
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// worldConfig says how to start a world.
type worldConfig struct {
	delta  bool
	v1, v2 int // VirtualService weights
	// v2Account, when set, is the service account in payments-v2's SVID
	// instead of the pod's (payments): an impostor.
	v2Account string
}

func startWorld(t *testing.T, ctx context.Context, delta bool, v1, v2 int) *world {
	t.Helper()
	return startWorldWith(t, ctx, worldConfig{delta: delta, v1: v1, v2: v2})
}

func startWorldWith(t *testing.T, ctx context.Context, cfg worldConfig) *world {
	t.Helper()
	delta, v1, v2 := cfg.delta, cfg.v1, cfg.v2
	listeners := map[string]net.Listener{}
	ports := map[string]int{}
	for _, v := range []string{"v1", "v2"} {
		lis, err := net.Listen("tcp", net.JoinHostPort(podIP[v], "0"))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { lis.Close() })
		listeners[v] = lis
		ports[v] = lis.Addr().(*net.TCPAddr).Port
	}
	mark := istiodLogMark(t)
	ds := istioxds.NewFakeDiscoveryServer(t, istioxds.FakeOptions{
		KubernetesObjectString: kubeObjects(ports),
		ConfigString:           policyYAML + "---\n" + splitYAML(v1, v2),
		ListenerBuilder:        func() (net.Listener, error) { return net.Listen("tcp", "127.0.0.1:0") },
	})
	ca, err := identitytest.NewCA("cluster.local")
	if err != nil {
		t.Fatal(err)
	}
	w := &world{istiod: ds, payments: map[string]net.Addr{}, delta: delta, logMark: mark}
	for _, v := range []string{"v1", "v2"} {
		serving := make(chan error, 1)
		onServing := mesh.WithServingStateCallback(func(_ net.Addr, ok bool, err error) {
			if ok || err != nil {
				select {
				case serving <- err:
				default:
				}
			}
		})
		account := "payments"
		if v == "v2" && cfg.v2Account != "" {
			account = cfg.v2Account
		}
		m := w.join(t, ctx, ca, "payments-"+v, podIP[v], account, map[string]string{"app": "payments", "version": v}, onServing)
		srv := m.NewGRPCServer()
		(&shop.Payments{Version: v}).Register(srv)
		served := make(chan struct{})
		lis := listeners[v]
		go func() {
			defer close(served)
			srv.Serve(lis)
		}()
		t.Cleanup(func() {
			srv.Stop()
			<-served
		})
		w.payments[v] = lis.Addr()
		select {
		case err := <-serving:
			if err != nil {
				t.Fatalf("payments-%s: istiod's inbound listener not usable: %v", v, err)
			}
		case <-ctx.Done():
			t.Fatalf("payments-%s never started serving: no inbound listener from istiod", v)
		}
	}
	w.checkout = w.join(t, ctx, ca, "checkout-0", podIP["checkout"], "checkout", map[string]string{"app": "checkout"})
	conn, err := w.checkout.Dial(target)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	w.conn = conn
	// Ready when every version with weight has answered.
	for v, weight := range map[string]int{"v1": v1, "v2": v2} {
		if weight == 0 || v == "v2" && cfg.v2Account != "" {
			continue
		}
		if err := shop.WaitFor(ctx, conn, 1, func(r shop.Reply) bool { return r.Version == v }); err != nil {
			t.Fatalf("checkout never reached payments-%s through istiod: %v", v, err)
		}
	}
	return w
}

// join starts a mesh for pod, with the bootstrap istio-agent writes for a
// proxyless gRPC workload and an SVID for its service account in the
// files the bootstrap's "default" certificate provider names.
func (w *world) join(t *testing.T, ctx context.Context, ca *identitytest.CA, pod, ip, sa string, labels map[string]string, opts ...mesh.Option) *mesh.Mesh {
	t.Helper()
	dir := filepath.Join(t.TempDir(), pod)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	svid, err := ca.Issue(fmt.Sprintf("spiffe://cluster.local/ns/%s/sa/%s", namespace, sa), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	files, err := ca.WriteFiles(dir, svid)
	if err != nil {
		t.Fatal(err)
	}
	features := []string{"xds_v3"}
	if w.delta {
		features = append(features, xdsclient.ServerFeatureDelta)
	}
	bootstrap := map[string]any{
		"xds_servers": []any{map[string]any{
			"server_uri":      w.istiod.Listener.Addr().String(),
			"channel_creds":   []any{map[string]any{"type": "insecure"}},
			"server_features": features,
		}},
		"node": map[string]any{
			"id": fmt.Sprintf("sidecar~%s~%s.%s~%s.svc.cluster.local", ip, pod, namespace, namespace),
			"metadata": map[string]any{
				"GENERATOR":       "grpc",
				"ISTIO_VERSION":   "1.31.0",
				"NAMESPACE":       namespace,
				"CLUSTER_ID":      "Kubernetes",
				"INSTANCE_IPS":    ip,
				"SERVICE_ACCOUNT": sa,
				"NAME":            pod,
				"LABELS":          labels,
			},
			"locality": map[string]any{},
		},
		"certificate_providers": map[string]any{
			"default": map[string]any{
				"plugin_name": "file_watcher",
				"config": map[string]any{
					"certificate_file":    files.CertFile,
					"private_key_file":    files.KeyFile,
					"ca_certificate_file": files.CAFile,
					"refresh_interval":    "900s",
				},
			},
		},
		"server_listener_resource_name_template": inboundTemplate,
	}
	data, err := json.Marshal(bootstrap)
	if err != nil {
		t.Fatal(err)
	}
	m, err := mesh.New(ctx, append([]mesh.Option{mesh.WithBootstrapJSON(data), mesh.WithLogger(shop.TestLogger(t).With("workload", pod))}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// apply creates or replaces Istio config in istiod's store, as kubectl
// apply would; istiod pushes the change.
func (w *world) apply(t *testing.T, yaml string) {
	t.Helper()
	cfgs, _, err := crd.ParseInputs(yaml)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cfgs {
		if _, err := w.istiod.Store().Update(c); err != nil {
			t.Fatalf("updating %s %s/%s in istiod: %v", c.GroupVersionKind.Kind, c.Namespace, c.Name, err)
		}
	}
}

// subscriptions returns the cluster and endpoint names checkout watches
// as mesh sees them and as istiod sees them.
func (w *world) subscriptions(t *testing.T) (meshView, istiodView map[string][]string) {
	t.Helper()
	meshView = map[string][]string{}
	for _, r := range w.checkout.XDSClient().Dump() {
		meshView[r.TypeURL] = append(meshView[r.TypeURL], r.Name)
	}
	istiodView = map[string][]string{}
	for _, con := range w.istiod.Discovery.AllClients() {
		p := con.Proxy()
		if !strings.HasPrefix(p.ID, "checkout-0.") {
			continue
		}
		p.RLock()
		for _, typeURL := range []string{v3.ClusterType, v3.EndpointType} {
			if wr := p.WatchedResources[typeURL]; wr != nil {
				istiodView[typeURL] = append(istiodView[typeURL], wr.ResourceNames.UnsortedList()...)
			}
		}
		p.RUnlock()
	}
	for _, names := range istiodView {
		slices.Sort(names)
	}
	return meshView, istiodView
}

// waitSubscriptionsAgree waits until istiod watches, for checkout, the
// clusters and endpoints mesh watches. A subscription change istiod
// dropped never converges; the context is the hang guard.
func (w *world) waitSubscriptionsAgree(t *testing.T, ctx context.Context, what string) {
	t.Helper()
	for {
		mv, iv := w.subscriptions(t)
		agree := true
		for _, typeURL := range []string{v3.ClusterType, v3.EndpointType} {
			if !slices.Equal(mv[typeURL], iv[typeURL]) {
				agree = false
			}
		}
		if agree {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s: istiod and mesh disagree on checkout's subscriptions:\nmesh:   %v\nistiod: %v", what, mv, iv)
		case <-time.After(2 * time.Millisecond):
		}
	}
}

// assertSplit checks that got of n calls went to a leg of weight p within
// five binomial standard deviations.
func assertSplit(t *testing.T, leg string, got, n int, p float64) {
	t.Helper()
	sigma := math.Sqrt(float64(n) * p * (1 - p))
	if want := float64(n) * p; math.Abs(float64(got)-want) > 5*sigma {
		t.Errorf("%s: got %d of %d, want %.0f ± %.0f (5σ)", leg, got, n, want, 5*sigma)
	}
}

// protocols runs f over state of the world and over delta.
func protocols(t *testing.T, f func(t *testing.T, delta bool)) {
	for _, delta := range []bool{false, true} {
		name := "sotw"
		if delta {
			name = "delta"
		}
		t.Run(name, func(t *testing.T) { f(t, delta) })
	}
}

// TestCanarySplit: istiod's 90/10 VirtualService over its subset clusters
// splits checkout's calls 90/10, every call over mTLS with both
// identities proved.
func TestCanarySplit(t *testing.T) {
	protocols(t, func(t *testing.T, delta bool) {
		ctx := testContext(t)
		w := startWorld(t, ctx, delta, 90, 10)
		const n = 5_000
		split := shop.Run(ctx, w.conn, n, 16)
		t.Logf("90/10 through istiod: %s", split)
		if split.Failed() != 0 {
			t.Fatalf("%d of %d RPCs failed", split.Failed(), n)
		}
		assertSplit(t, "v1", split.Count("v1"), n, 0.9)
		assertSplit(t, "v2", split.Count("v2"), n, 0.1)
		if got, want := split.Last().Caller, "spiffe://cluster.local/ns/default/sa/checkout"; got != want {
			t.Errorf("payments saw caller %q, want %q over mTLS", got, want)
		}
		w.waitSubscriptionsAgree(t, ctx, "after the split")
		checkIstiodLog(t, w.logMark)
	})
}

// TestStrictInbound: the servers' inbound listeners come from istiod's
// STRICT PeerAuthentication, so a plaintext client is refused while
// mesh's mTLS client is served.
func TestStrictInbound(t *testing.T) {
	protocols(t, func(t *testing.T, delta bool) {
		ctx := testContext(t)
		w := startWorld(t, ctx, delta, 100, 0)
		for _, v := range []string{"v1", "v2"} {
			raw, err := grpc.NewClient(w.payments[v].String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				t.Fatal(err)
			}
			_, err = shop.Charge(ctx, raw)
			raw.Close()
			if err == nil {
				t.Errorf("payments-%s served a plaintext call under STRICT", v)
			}
		}
		reply, err := shop.Charge(ctx, w.conn)
		if err != nil {
			t.Fatal(err)
		}
		if reply.Caller != "spiffe://cluster.local/ns/default/sa/checkout" {
			t.Errorf("caller = %q, want checkout's SPIFFE ID", reply.Caller)
		}
		checkIstiodLog(t, w.logMark)
	})
}

// TestSANsFromIstiod: istiod's CDS names the service accounts of the
// payments pods as the only acceptable server identities; a payments-v2
// whose SVID names another account is refused by the client, and no call
// reaches it, while v1 keeps serving.
func TestSANsFromIstiod(t *testing.T) {
	protocols(t, func(t *testing.T, delta bool) {
		ctx := testContext(t)
		w := startWorldWith(t, ctx, worldConfig{delta: delta, v1: 100, v2: 0, v2Account: "impostor"})
		w.apply(t, splitYAML(0, 100))
		// Until the push arrives calls still go to v1; after it, every
		// call must fail, naming the identity that was not accepted.
		var lastErr error
		for {
			reply, err := shop.Charge(ctx, w.conn)
			if err == nil && reply.Version == "v2" {
				t.Fatalf("a call reached payments-v2, whose SVID is for another service account: %+v", reply)
			}
			if err != nil {
				lastErr = err
				break
			}
			if ctx.Err() != nil {
				t.Fatal("the 0/100 push never arrived")
			}
		}
		t.Logf("call to the impostor: %v", lastErr)
		if !strings.Contains(lastErr.Error(), "impostor") {
			t.Errorf("call to the impostor failed with %v; want the rejected identity named", lastErr)
		}
		for range 20 {
			if reply, err := shop.Charge(ctx, w.conn); err == nil {
				t.Fatalf("a call succeeded under 0/100 with only the impostor behind it: %+v", reply)
			}
		}
		w.apply(t, splitYAML(100, 0))
		if err := shop.WaitFor(ctx, w.conn, 1, func(r shop.Reply) bool { return r.Version == "v1" }); err != nil {
			t.Fatalf("back to v1: %v", err)
		}
		checkIstiodLog(t, w.logMark)
	})
}

// TestFlipsUnderLoad: 200 flips 90/10 -> 0/100 -> 90/10 in istiod while
// checkout calls payments from four goroutines; not one call fails, and
// after every flip istiod and mesh agree on what checkout subscribes to.
func TestFlipsUnderLoad(t *testing.T) {
	protocols(t, func(t *testing.T, delta bool) {
		ctx := testContext(t)
		w := startWorld(t, ctx, delta, 90, 10)

		load := shop.StartLoad(ctx, t, 4, func(ctx context.Context) error { _, err := shop.Charge(ctx, w.conn); return err })
		const flips = 200
		for i := range flips {
			w.apply(t, splitYAML(0, 100))
			// 50 v2 replies in a row cannot come from 90/10 (0.1^50).
			if err := shop.WaitFor(ctx, w.conn, 50, func(r shop.Reply) bool { return r.Version == "v2" }); err != nil {
				t.Fatalf("flip %d to 0/100: %v", i, err)
			}
			w.waitSubscriptionsAgree(t, ctx, fmt.Sprintf("flip %d to 0/100", i))
			w.apply(t, splitYAML(90, 10))
			if err := shop.WaitFor(ctx, w.conn, 1, func(r shop.Reply) bool { return r.Version == "v1" }); err != nil {
				t.Fatalf("flip %d back to 90/10: %v", i, err)
			}
			w.waitSubscriptionsAgree(t, ctx, fmt.Sprintf("flip %d back to 90/10", i))
		}
		load.Check(t, fmt.Sprintf("%d flips through istiod", flips), flips)
		checkIstiodLog(t, w.logMark)
	})
}

// istiodLogMark returns where istiod's log ends now, so that a test
// reads only what istiod logged while it ran.
func istiodLogMark(t *testing.T) int64 {
	t.Helper()
	fi, err := os.Stat(istiodLog)
	if err != nil {
		return 0
	}
	return fi.Size()
}

// Lines of istiod's delta log (pilot/pkg/xds/delta.go) that
// checkIstiodLog reads.
var (
	deltaRequestLine = regexp.MustCompile(`ADS:(\w+): REQ (\S+) resources sub:(\d+) unsub:(\d+) nonce:`)
	expiredNonceLine = regexp.MustCompile(`ADS:(\w+): REQ (\S+) Expired nonce received`)
)

// checkIstiodLog fails the test if istiod, since mark, dropped or
// rejected a request of mesh's (its only clients here): a delta request
// that changed subscriptions and that istiod dropped whole for its stale
// nonce (the change is lost while the client believes it sent); one that
// changed subscriptions while ACKing, which istiod's delta protocol
// treats as a client bug; or a NACK. A bare ACK with a stale nonce is
// normal (istiod pushed again before the ACK arrived) and not counted.
func checkIstiodLog(t *testing.T, mark int64) {
	t.Helper()
	f, err := os.Open(istiodLog)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.Seek(mark, 0); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 1<<20), 1<<24)
	complaints := map[string]int{}
	var first []string
	complain := func(what, line string) {
		complaints[what]++
		if len(first) < 3 {
			first = append(first, line)
		}
	}
	// changes holds, per type and connection, whether the request istiod
	// is handling changes subscriptions.
	changes := map[string]bool{}
	var staleAcks int
	for sc.Scan() {
		line := sc.Text()
		if m := deltaRequestLine.FindStringSubmatch(line); m != nil {
			changes[m[1]+" "+m[2]] = m[3] != "0" || m[4] != "0"
			continue
		}
		if m := expiredNonceLine.FindStringSubmatch(line); m != nil {
			if changes[m[1]+" "+m[2]] {
				complain("subscription change dropped for a stale nonce", line)
			} else {
				staleAcks++
			}
			continue
		}
		for _, bad := range []string{"Subscribed resources check mismatch", "ACK ERROR"} {
			if strings.Contains(line, bad) {
				complain(bad, line)
			}
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if staleAcks > 0 {
		t.Logf("istiod ignored %d delta ACKs whose nonce a newer push had replaced", staleAcks)
	}
	if len(complaints) > 0 {
		t.Errorf("istiod dropped or rejected mesh's requests: %v; first:\n%s", complaints, strings.Join(first, "\n"))
	}
}
