package kubestore

// These tests run against a real kube-apiserver and kube-controller-manager
// (internal/kubetest); without the binaries they skip and say how to build
// them.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/kubecp"
	"github.com/weft-net/weft/internal/kubetest"
	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/lease/kubeannot"
	"github.com/weft-net/weft/internal/syncbuf"
)

func TestMain(m *testing.M) { os.Exit(kubetest.Main(m)) }

// testTimeout bounds each test's API calls and waits: generous, since the
// machine is shared and loaded.
const testTimeout = 3 * time.Minute

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	t.Cleanup(cancel)
	return ctx
}

func uniq(prefix string) string { return fmt.Sprintf("%s-%08x", prefix, rand.Uint32()) }

const (
	netConfV4   = `{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}`
	netConfDual = `{"Network":"10.244.0.0/16","IPv6Network":"fd00:10:244::/56","EnableIPv6":true,"Backend":{"Type":"vxlan"}}`
)

func writeNetConf(t *testing.T, conf string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "net-conf.json")
	if err := os.WriteFile(p, []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func parseConf(t *testing.T, conf string) *config.Network {
	t.Helper()
	n, _, err := config.Parse([]byte(conf))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// openStore opens a Store on cfg, logging into the returned buffer (shown
// when the test fails), closed when t ends.
func openStore(t *testing.T, cfg *rest.Config, o Options) (*Store, *syncbuf.Buffer) {
	t.Helper()
	logs := &syncbuf.Buffer{}
	o.RESTConfig = cfg
	o.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	if o.NetConfigPath == "" {
		o.NetConfigPath = writeNetConf(t, netConfV4)
	}
	s, err := Open(testCtx(t), o)
	if err != nil {
		t.Fatalf("open store: %v\n%s", err, logs)
	}
	t.Cleanup(func() {
		s.Close()
		if t.Failed() {
			t.Logf("store %s log:\n%s", s.NodeName(), logs)
		}
	})
	return s, logs
}

// createNode creates a Node as a kubelet registering would (after mutate),
// deleted when t ends.
func createNode(t *testing.T, cs kubernetes.Interface, name string, mutate func(*corev1.Node)) {
	t.Helper()
	n := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if mutate != nil {
		mutate(n)
	}
	if _, err := cs.CoreV1().Nodes().Create(testCtx(t), n, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create node %s: %v", name, err)
	}
	t.Cleanup(func() { _ = cs.CoreV1().Nodes().Delete(context.Background(), name, metav1.DeleteOptions{}) })
}

// waitNode waits until the node satisfies ok and returns it.
func waitNode(t *testing.T, cs kubernetes.Interface, name string, ok func(*corev1.Node) bool) *corev1.Node {
	t.Helper()
	ctx := testCtx(t)
	for {
		n, err := cs.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err == nil && ok(n) {
			return n
		}
		select {
		case <-ctx.Done():
			t.Fatalf("node %s: %v (last error %v)", name, ctx.Err(), err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func podCIDROf(t *testing.T, cs kubernetes.Interface, name string) netip.Prefix {
	t.Helper()
	return netip.MustParsePrefix(podCIDRNode(t, cs, name).Spec.PodCIDR)
}

func podCIDRNode(t *testing.T, cs kubernetes.Interface, name string) *corev1.Node {
	t.Helper()
	return waitNode(t, cs, name, hasPodCIDR)
}

// ownAnnotations renders the node's annotations under keys' prefix as the
// kubeannot golden files hold them.
func ownAnnotations(t *testing.T, cs kubernetes.Interface, keys kubeannot.Keys, name string) string {
	t.Helper()
	n, err := cs.CoreV1().Nodes().Get(testCtx(t), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	m := map[string]string{}
	for k, v := range n.Annotations {
		if keys.Owns(k) {
			m[k] = v
		}
	}
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	return string(b) + "\n"
}

// patchAnnotations patches the node's annotations and returns when it
// sent the request.
func patchAnnotations(t *testing.T, cs kubernetes.Interface, name string, ann map[string]any) time.Time {
	t.Helper()
	patch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": ann}})
	sent := time.Now()
	if _, err := cs.CoreV1().Nodes().Patch(testCtx(t), name, types.StrategicMergePatchType, patch, metav1.PatchOptions{}); err != nil {
		t.Fatalf("patch node %s: %v", name, err)
	}
	return sent
}

var (
	macV4 = `{"VNI":1,"VtepMAC":"c6:d2:32:6f:8f:44"}`
	macV6 = `{"VNI":1,"VtepMAC":"8a:11:0c:5e:20:01"}`
)

func vxlanAttrs(ip4 string, ip6 string) lease.Attrs {
	a := lease.Attrs{PublicIP: netip.MustParseAddr(ip4), BackendType: "vxlan", BackendData: json.RawMessage(macV4)}
	if ip6 != "" {
		v6 := netip.MustParseAddr(ip6)
		a.PublicIPv6, a.BackendV6Data = &v6, json.RawMessage(macV6)
	}
	return a
}

// TestAcquirePublishesFlannelsAnnotations: for each backend, the node's
// annotations after Acquire are byte for byte kubeannot's golden files
// (flannel's), the lease is the node's podCIDR, and a second Acquire
// writes nothing.
func TestAcquirePublishesFlannelsAnnotations(t *testing.T) {
	cp := kubetest.Shared(t)
	cs := kubetest.Client(t, cp)
	for _, tt := range []struct {
		golden string
		attrs  lease.Attrs
	}{
		{"vxlan.json", vxlanAttrs("192.0.2.3", "")},
		{"hostgw.json", lease.Attrs{PublicIP: netip.MustParseAddr("192.0.2.9"), BackendType: "host-gw"}},
		{"udp.json", lease.Attrs{PublicIP: netip.MustParseAddr("192.0.2.7")}},
		{"wireguard.json", lease.Attrs{PublicIP: netip.MustParseAddr("192.0.2.5"), BackendType: "wireguard",
			BackendData: json.RawMessage(`{"PublicKey":"YJq3aWiUsQZ8cYtmkbIYLfRUZN3zFDwgWfEAHRV3s1Q=","Port":51820}`)}},
	} {
		t.Run(tt.golden, func(t *testing.T) {
			name := uniq("acq")
			createNode(t, cs, name, nil)
			s, _ := openStore(t, cp.AdminConfig(), Options{NodeName: name})
			l, err := s.Acquire(testCtx(t), parseConf(t, netConfV4), tt.attrs, lease.Hint{})
			if err != nil {
				t.Fatal(err)
			}
			if want := podCIDROf(t, cs, name); l.Subnet != want || l.IPv6Subnet.IsValid() {
				t.Errorf("lease %s, want the node's podCIDR %s", l.Key(), want)
			}
			if !l.Attrs.Equal(tt.attrs) {
				t.Errorf("lease attrs %+v, want %+v", l.Attrs, tt.attrs)
			}
			if until := time.Until(l.Expiration); until < 23*time.Hour || until > 25*time.Hour {
				t.Errorf("expiration in %v, want 24h", until)
			}
			want, err := os.ReadFile(filepath.Join("..", "kubeannot", "testdata", tt.golden))
			if err != nil {
				t.Fatal(err)
			}
			if got := ownAnnotations(t, cs, s.Keys(), name); got != string(want) {
				t.Errorf("annotations:\n%s\nwant (%s):\n%s", got, tt.golden, want)
			}

			// Once the cache has our annotations, Acquire writes nothing.
			n := waitNode(t, cs, name, func(*corev1.Node) bool { return true })
			waitCached(t, s, name, n.ResourceVersion)
			if _, err := s.Acquire(testCtx(t), parseConf(t, netConfV4), tt.attrs, lease.Hint{}); err != nil {
				t.Fatal(err)
			}
			if again := waitNode(t, cs, name, func(*corev1.Node) bool { return true }); again.ResourceVersion != n.ResourceVersion {
				t.Errorf("second Acquire rewrote the node (resourceVersion %s -> %s)", n.ResourceVersion, again.ResourceVersion)
			}

			r, err := s.Renew(testCtx(t), l)
			if err != nil || !r.Equal(l) || !r.Expiration.After(l.Expiration) {
				t.Errorf("Renew = %+v, %v", r, err)
			}
		})
	}
}

// waitCached waits until the store's cache holds the node at least at
// resourceVersion rv.
func waitCached(t *testing.T, s *Store, name, rv string) *corev1.Node {
	t.Helper()
	ctx := testCtx(t)
	for {
		// resourceVersions are opaque to clients, but this API server's
		// are etcd revisions, and the test may compare them.
		if n, ok := s.cachedNode(name); ok && revision(t, n.ResourceVersion) >= revision(t, rv) {
			return n
		}
		select {
		case <-ctx.Done():
			t.Fatalf("node %s at resourceVersion %s never reached the cache", name, rv)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

func revision(t *testing.T, rv string) uint64 {
	t.Helper()
	n, err := strconv.ParseUint(rv, 10, 64)
	if err != nil {
		t.Fatalf("resourceVersion %q: %v", rv, err)
	}
	return n
}

// TestAcquireWaitsForPodCIDR: with the cluster CIDR used up, a new node
// gets no podCIDR; Acquire waits, saying so once, and returns as soon as
// kube-controller-manager assigns one (after another node leaves).
func TestAcquireWaitsForPodCIDR(t *testing.T) {
	// Room for two /25s: both go to the fillers.
	cp := kubetest.Start(t, func(c *kubecp.Config) {
		c.ClusterCIDRs = []netip.Prefix{netip.MustParsePrefix("10.250.0.0/24")}
		c.NodeCIDRMaskSizeIPv4 = 25
	})
	cs := kubetest.Client(t, cp)
	f1, f2, name := uniq("filler"), uniq("filler"), uniq("late")
	createNode(t, cs, f1, nil)
	createNode(t, cs, f2, nil)
	freed := podCIDROf(t, cs, f1)
	podCIDROf(t, cs, f2)

	conf := `{"Network":"10.250.0.0/24","Backend":{"Type":"host-gw"}}`
	s, logs := openStore(t, cp.AdminConfig(), Options{NodeName: name, NetConfigPath: writeNetConf(t, conf)})
	type result struct {
		l   lease.Lease
		err error
		at  time.Time
	}
	done := make(chan result, 1)
	go func() {
		l, err := s.Acquire(testCtx(t), parseConf(t, conf), lease.Attrs{PublicIP: netip.MustParseAddr("192.0.2.44"), BackendType: "host-gw"}, lease.Hint{})
		done <- result{l, err, time.Now()}
	}()
	waitLog(t, logs, "node not registered yet")

	createNode(t, cs, name, nil)
	waitLog(t, logs, "node has no podCIDR yet")
	// The test's own watch timestamps the assignment.
	assigned := make(chan time.Time, 1)
	go watchPodCIDR(t, cs, name, assigned)
	select {
	case r := <-done:
		t.Fatalf("Acquire returned before the node had a podCIDR: %+v", r)
	case <-time.After(time.Second):
	}
	if n, _ := cs.CoreV1().Nodes().Get(testCtx(t), name, metav1.GetOptions{}); hasPodCIDR(n) {
		t.Fatalf("node %s got podCIDR %s although the cluster CIDR is full", name, n.Spec.PodCIDR)
	}

	deleted := time.Now()
	if err := cs.CoreV1().Nodes().Delete(testCtx(t), f1, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	var r result
	select {
	case r = <-done:
	case <-time.After(testTimeout):
		t.Fatal("Acquire did not return after the node got a podCIDR")
	}
	if r.err != nil {
		t.Fatal(r.err)
	}
	at := <-assigned
	if r.l.Subnet != freed {
		t.Errorf("lease %s, want the freed %s", r.l.Key(), freed)
	}
	t.Logf("latency: podCIDR assignment (seen by a watch) -> Acquire returned: %v (controller-manager assigned it %v after the other node was deleted)",
		r.at.Sub(at).Round(time.Microsecond), at.Sub(deleted).Round(time.Millisecond))
	for _, line := range []string{"node not registered yet", "node has no podCIDR yet"} {
		if n := strings.Count(logs.String(), line); n != 1 {
			t.Errorf("%q logged %d times, want once", line, n)
		}
	}
}

func waitLog(t *testing.T, logs *syncbuf.Buffer, s string) {
	t.Helper()
	ctx := testCtx(t)
	for !strings.Contains(logs.String(), s) {
		select {
		case <-ctx.Done():
			t.Fatalf("never logged %q", s)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// watchPodCIDR sends the time it sees the node's podCIDR.
func watchPodCIDR(t *testing.T, cs kubernetes.Interface, name string, at chan<- time.Time) {
	ctx := testCtx(t)
	w, err := cs.CoreV1().Nodes().Watch(ctx, metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector("metadata.name", name).String()})
	if err != nil {
		t.Error(err)
		return
	}
	defer w.Stop()
	for ev := range w.ResultChan() {
		if n, ok := ev.Object.(*corev1.Node); ok && ev.Type != watch.Deleted && hasPodCIDR(n) {
			at <- time.Now()
			return
		}
	}
}

func TestAcquirePodCIDROutsideNetwork(t *testing.T) {
	cp := kubetest.Shared(t)
	cs := kubetest.Client(t, cp)
	name := uniq("outside")
	createNode(t, cs, name, nil)
	cidr := podCIDROf(t, cs, name)
	conf := `{"Network":"10.99.0.0/16","Backend":{"Type":"vxlan"}}`
	s, _ := openStore(t, cp.AdminConfig(), Options{NodeName: name, NetConfigPath: writeNetConf(t, conf)})
	_, err := s.Acquire(testCtx(t), parseConf(t, conf), vxlanAttrs("192.0.2.50", ""), lease.Hint{})
	if err == nil {
		t.Fatal("Acquire succeeded")
	}
	for _, want := range []string{name, cidr.String(), "10.99.0.0/16", "outside"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}
	if n := waitNode(t, cs, name, hasPodCIDR); len(n.Annotations) != 0 {
		t.Errorf("refused lease was published: %v", n.Annotations)
	}
}

// A Node object without any annotation (flannel panics writing into its
// nil map) is acquired, watched and cached.
func TestNodeWithoutAnnotations(t *testing.T) {
	cp := kubetest.Shared(t)
	cs := kubetest.Client(t, cp)
	bare, name := uniq("bare"), uniq("nil-ann")
	createNode(t, cs, bare, nil)
	createNode(t, cs, name, nil)
	for _, n := range []string{bare, name} {
		if got := waitNode(t, cs, n, hasPodCIDR); got.Annotations != nil {
			t.Fatalf("node %s has annotations %v; the test needs none", n, got.Annotations)
		}
	}
	s, _ := openStore(t, cp.AdminConfig(), Options{NodeName: name})
	rec := startWatch(t, s)
	l, err := s.Acquire(testCtx(t), parseConf(t, netConfV4), vxlanAttrs("192.0.2.60", ""), lease.Hint{})
	if err != nil {
		t.Fatal(err)
	}
	rec.waitFor(t, "own lease", func(e lease.Event) bool { return e.Type == lease.Added && e.Lease.Equal(l) })
	if c, ok := s.cachedNode(bare); !ok || c.Annotations != nil {
		t.Errorf("bare node cached as %+v", c)
	}
}

// TestTransformStrips: the cache keeps of a node only its name, podCIDRs
// and the annotations under our prefix.
func TestTransformStrips(t *testing.T) {
	cp := kubetest.Shared(t)
	cs := kubetest.Client(t, cp)
	name := uniq("fat")
	keys, _ := kubeannot.NewKeys(kubeannot.DefaultPrefix)
	createNode(t, cs, name, func(n *corev1.Node) {
		n.Labels = map[string]string{"kubernetes.io/hostname": name, "topology.kubernetes.io/zone": "z1"}
		n.Annotations = map[string]string{"node.alpha.kubernetes.io/ttl": "0", keys.NodePublicIP: "198.51.100.7",
			"example.com/big": strings.Repeat("x", 4096)}
		n.Spec.Taints = []corev1.Taint{{Key: "example.com/t", Effect: corev1.TaintEffectNoSchedule}}
	})
	n := waitNode(t, cs, name, hasPodCIDR)
	n.Status.Images = []corev1.ContainerImage{{Names: []string{"registry.example/huge:1"}, SizeBytes: 1 << 30}}
	n.Status.Addresses = []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "192.0.2.70"}}
	n.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue, Reason: "KubeletReady",
		LastHeartbeatTime: metav1.Now(), LastTransitionTime: metav1.Now()}}
	n, err := cs.CoreV1().Nodes().UpdateStatus(testCtx(t), n, metav1.UpdateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(n.ManagedFields) == 0 || len(n.Status.Images) == 0 {
		t.Fatalf("the API server's node has no managed fields or images to strip: %+v", n)
	}

	s, _ := openStore(t, cp.AdminConfig(), Options{NodeName: name})
	got := waitCached(t, s, name, n.ResourceVersion)
	want := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name, UID: n.UID, ResourceVersion: n.ResourceVersion,
			Annotations: map[string]string{keys.NodePublicIP: "198.51.100.7"}},
		Spec: corev1.NodeSpec{PodCIDR: n.Spec.PodCIDR, PodCIDRs: n.Spec.PodCIDRs},
	}
	if gb, wb := mustJSON(t, got), mustJSON(t, want); gb != wb {
		t.Errorf("cached node\n %s\nwant\n %s", gb, wb)
	}
	v4, v6, err := s.NodePublicIPs(testCtx(t))
	if err != nil || v4 != netip.MustParseAddr("198.51.100.7") || v6.IsValid() {
		t.Errorf("NodePublicIPs = %v, %v, %v", v4, v6, err)
	}
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// A restarted agent finds the VtepMACs it published.
func TestVtepMACs(t *testing.T) {
	cp := kubetest.Shared(t)
	cs := kubetest.Client(t, cp)
	name := uniq("mac")
	createNode(t, cs, name, nil)
	s, _ := openStore(t, cp.AdminConfig(), Options{NodeName: name, NetConfigPath: writeNetConf(t, netConfV4)})
	if v4, v6, err := s.VtepMACs(testCtx(t)); err != nil || v4 != nil || v6 != nil {
		t.Fatalf("before publishing: %v %v %v", v4, v6, err)
	}
	if _, err := s.Acquire(testCtx(t), parseConf(t, netConfV4), vxlanAttrs("192.0.2.80", ""), lease.Hint{}); err != nil {
		t.Fatal(err)
	}
	n := waitNode(t, cs, name, func(*corev1.Node) bool { return true })
	s.Close()
	again, _ := openStore(t, cp.AdminConfig(), Options{NodeName: name})
	waitCached(t, again, name, n.ResourceVersion)
	v4, v6, err := again.VtepMACs(testCtx(t))
	if err != nil || v4.String() != "c6:d2:32:6f:8f:44" || v6 != nil {
		t.Errorf("VtepMACs = %v, %v, %v", v4, v6, err)
	}
}

// watchRec records what a Watch delivers.
type watchRec struct {
	mu      sync.Mutex
	batches [][]lease.Event
	at      []time.Time
	seen    int // batches waitFor has looked at
	more    chan struct{}
}

func startWatch(t *testing.T, s *Store) *watchRec {
	t.Helper()
	r := &watchRec{more: make(chan struct{}, 1)}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		errc <- s.Watch(ctx, func(evs []lease.Event) {
			r.mu.Lock()
			r.batches = append(r.batches, slices.Clone(evs))
			r.at = append(r.at, time.Now())
			r.mu.Unlock()
			select {
			case r.more <- struct{}{}:
			default:
			}
		})
	}()
	t.Cleanup(func() {
		cancel()
		if err := <-errc; err != context.Canceled {
			t.Errorf("Watch returned %v, want context.Canceled", err)
		}
	})
	return r
}

// snapshot waits for the first batch.
func (r *watchRec) snapshot(t *testing.T) []lease.Event {
	t.Helper()
	ctx := testCtx(t)
	for {
		r.mu.Lock()
		if len(r.batches) > 0 {
			b := r.batches[0]
			if r.seen == 0 {
				r.seen = 1
			}
			r.mu.Unlock()
			return b
		}
		r.mu.Unlock()
		select {
		case <-r.more:
		case <-ctx.Done():
			t.Fatal("no snapshot")
		}
	}
}

// waitFor returns the first event matching ok in a batch after the ones
// already looked at, with the time its batch was delivered, and the
// events before it in that batch and the batches in between.
func (r *watchRec) waitFor(t *testing.T, what string, ok func(lease.Event) bool) (lease.Event, time.Time, []lease.Event) {
	t.Helper()
	ctx := testCtx(t)
	var before []lease.Event
	for {
		r.mu.Lock()
		for r.seen < len(r.batches) {
			b, at := r.batches[r.seen], r.at[r.seen]
			for i, e := range b {
				if ok(e) {
					before = append(before, b[:i]...)
					// The rest of this batch stays to be looked at.
					r.batches[r.seen] = b[i+1:]
					r.mu.Unlock()
					return e, at, before
				}
			}
			before = append(before, b...)
			r.seen++
		}
		r.mu.Unlock()
		select {
		case <-r.more:
		case <-ctx.Done():
			t.Fatalf("Watch never delivered %s; it delivered %v", what, before)
		}
	}
}

func leaseOn(ip string) func(lease.Event) bool {
	a := netip.MustParseAddr(ip)
	return func(e lease.Event) bool { return e.Lease.Attrs.PublicIP == a }
}

// TestWatch, in a dual-stack cluster: the snapshot, then an added node,
// an update of one address family, a podCIDR that is assigned after the
// annotations were written, a node recreated with other podCIDRs, and a
// deletion; unusable nodes are logged once and skipped.
func TestWatch(t *testing.T) {
	cp := kubetest.Start(t, func(c *kubecp.Config) {
		c.ClusterCIDRs = []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16"), netip.MustParsePrefix("fd00:10:244::/56")}
		c.NodeCIDRMaskSizeIPv4, c.NodeCIDRMaskSizeIPv6 = 24, 64
	})
	cs := kubetest.Client(t, cp)
	conf := writeNetConf(t, netConfDual)
	n := parseConf(t, netConfDual)
	keys, _ := kubeannot.NewKeys(kubeannot.DefaultPrefix)

	// Before the watch: this node (published), a node that publishes
	// nothing, and one whose public-ip is garbage.
	self, plain, bad := uniq("self"), uniq("plain"), uniq("bad")
	createNode(t, cs, self, nil)
	createNode(t, cs, plain, nil)
	createNode(t, cs, bad, func(n *corev1.Node) {
		n.Annotations = map[string]string{keys.KubeSubnetManager: "true", keys.BackendType: "vxlan", keys.PublicIP: "not-an-ip",
			keys.BackendData: macV4, keys.PublicIPv6: "2001:db8::99", keys.BackendV6Data: macV6}
	})
	s, logs := openStore(t, cp.AdminConfig(), Options{NodeName: self, NetConfigPath: conf})
	own, err := s.Acquire(testCtx(t), n, vxlanAttrs("192.0.2.1", "2001:db8::1"), lease.Hint{})
	if err != nil {
		t.Fatal(err)
	}
	if !own.Subnet.IsValid() || !own.IPv6Subnet.IsValid() {
		t.Fatalf("own lease %s is not dual-stack", own.Key())
	}
	waitCached(t, s, self, waitNode(t, cs, self, func(n *corev1.Node) bool { return keys.Managed(n.Annotations) }).ResourceVersion)

	rec := startWatch(t, s)
	snap := rec.snapshot(t)
	if len(snap) != 1 || snap[0].Type != lease.Added || !snap[0].Lease.Equal(own) {
		t.Fatalf("snapshot %+v, want just this node's lease %+v", snap, own)
	}

	// Added: another agent publishes its lease.
	other := uniq("other")
	createNode(t, cs, other, nil)
	so, _ := openStore(t, cp.AdminConfig(), Options{NodeName: other, NetConfigPath: conf})
	waitCached(t, so, other, podCIDRNode(t, cs, other).ResourceVersion)
	acquiring := time.Now()
	ol, err := so.Acquire(testCtx(t), n, vxlanAttrs("192.0.2.2", "2001:db8::2"), lease.Hint{})
	if err != nil {
		t.Fatal(err)
	}
	ev, at, _ := rec.waitFor(t, "the other node's lease", leaseOn("192.0.2.2"))
	if ev.Type != lease.Added || !ev.Lease.Equal(ol) {
		t.Errorf("event %+v, want Added %+v", ev, ol)
	}
	t.Logf("latency: another store's Acquire called (it patches the annotations) -> Watch event: %v", at.Sub(acquiring).Round(time.Microsecond))

	// One family changes: only public-ipv6 (flannel forwards an update in
	// dual stack only when both families changed).
	var lat []time.Duration
	for i := range 5 {
		ip6 := fmt.Sprintf("2001:db8::2:%d", i+1)
		patched := patchAnnotations(t, cs, other, map[string]any{keys.PublicIPv6: ip6})
		ev, at, _ = rec.waitFor(t, "the IPv6 update", func(e lease.Event) bool {
			return e.Lease.Attrs.PublicIPv6 != nil && e.Lease.Attrs.PublicIPv6.String() == ip6
		})
		if ev.Type != lease.Added || ev.Lease.Subnet != ol.Subnet || ev.Lease.Attrs.PublicIP != ol.Attrs.PublicIP {
			t.Errorf("IPv6 update: %+v", ev)
		}
		lat = append(lat, at.Sub(patched))
	}
	slices.Sort(lat)
	t.Logf("latency: annotation patch request sent -> Watch event, 5 runs: min %v median %v max %v", lat[0].Round(time.Microsecond),
		lat[2].Round(time.Microsecond), lat[4].Round(time.Microsecond))

	// Annotations first, podCIDR later: flannel sees only an update
	// without annotation changes and never learns the lease.
	late := uniq("late")
	createNode(t, cs, late, func(n *corev1.Node) {
		n.Annotations = map[string]string{keys.KubeSubnetManager: "true", keys.BackendType: "vxlan",
			keys.PublicIP: "192.0.2.3", keys.BackendData: macV4, keys.PublicIPv6: "2001:db8::3", keys.BackendV6Data: macV6}
	})
	ev, _, _ = rec.waitFor(t, "the late node's lease", leaseOn("192.0.2.3"))
	lateNode := waitNode(t, cs, late, hasPodCIDR)
	if ev.Type != lease.Added || ev.Lease.Subnet.String() != lateNode.Spec.PodCIDRs[0] || ev.Lease.IPv6Subnet.String() != lateNode.Spec.PodCIDRs[1] {
		t.Errorf("late node: event %+v, node podCIDRs %v", ev, lateNode.Spec.PodCIDRs)
	}
	old := ev.Lease

	// The node comes back with other podCIDRs (they never change in
	// place): the old subnet is removed, the new one added.
	if err := cs.CoreV1().Nodes().Delete(testCtx(t), late, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	createNode(t, cs, late, func(n *corev1.Node) {
		n.Annotations = lateNode.Annotations
		n.Spec.PodCIDR, n.Spec.PodCIDRs = "10.244.250.0/24", []string{"10.244.250.0/24", "fd00:10:244:fa::/64"}
	})
	ev, _, before := rec.waitFor(t, "the recreated node's lease", func(e lease.Event) bool {
		return e.Type == lease.Added && e.Lease.Subnet.String() == "10.244.250.0/24"
	})
	if ev.Lease.IPv6Subnet.String() != "fd00:10:244:fa::/64" {
		t.Errorf("recreated: %+v", ev)
	}
	if !slices.ContainsFunc(before, func(e lease.Event) bool { return e.Type == lease.Removed && e.Lease.Key() == old.Key() }) {
		t.Errorf("old lease %s not removed before the new one was added: %+v", old.Key(), before)
	}

	// Deleted.
	if err := cs.CoreV1().Nodes().Delete(testCtx(t), other, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	ev, _, _ = rec.waitFor(t, "the removal", func(e lease.Event) bool {
		return e.Type == lease.Removed && e.Lease.Attrs.PublicIP == ol.Attrs.PublicIP
	})
	if ev.Lease.Key() != ol.Key() {
		t.Errorf("removed %s, want %s", ev.Lease.Key(), ol.Key())
	}

	// The bad node was never reported and is logged once, though it
	// changed since.
	patchAnnotations(t, cs, bad, map[string]any{"example.com/touch": "1"})
	patchAnnotations(t, cs, bad, map[string]any{"example.com/touch": "2"})
	patchAnnotations(t, cs, self, map[string]any{"example.com/touch": "3"})
	rv := waitNode(t, cs, self, func(n *corev1.Node) bool { return n.Annotations["example.com/touch"] == "3" }).ResourceVersion
	waitCached(t, s, self, rv)
	time.Sleep(100 * time.Millisecond) // the watcher runs after the cache is updated
	if c := strings.Count(logs.String(), "node="+bad); c != 1 {
		t.Errorf("bad node logged %d times, want once:\n%s", c, logs)
	}
	rec.mu.Lock()
	defer rec.mu.Unlock()
	for _, b := range rec.batches {
		for _, e := range b {
			if e.Lease.Attrs.PublicIPv6 != nil && e.Lease.Attrs.PublicIPv6.String() == "2001:db8::99" {
				t.Errorf("bad node reported: %+v", e)
			}
		}
	}
}

// TestRBAC: with a ServiceAccount token bound to exactly flannel's
// ClusterRole the agent works, finding its node through its pod; without
// nodes/status patch Acquire names the missing permission; without pods
// get or nodes list, Open does.
func TestRBAC(t *testing.T) {
	cp := kubetest.Shared(t)
	cs := kubetest.Client(t, cp)
	ctx := testCtx(t)
	ns, node := uniq("kube-flannel"), uniq("rbac")
	createNode(t, cs, node, nil)
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cs.CoreV1().Namespaces().Delete(context.Background(), ns, metav1.DeleteOptions{}) })

	flannel := []rbacv1.PolicyRule{
		{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get"}},
		{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"get", "list", "watch"}},
		{APIGroups: []string{""}, Resources: []string{"nodes/status"}, Verbs: []string{"patch"}},
	}
	agent := func(sa string, rules []rbacv1.PolicyRule) (kubeconfig, pod string) {
		t.Helper()
		if _, err := cs.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		role := ns + "-" + sa
		if _, err := cs.RbacV1().ClusterRoles().Create(ctx, &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: role}, Rules: rules}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = cs.RbacV1().ClusterRoles().Delete(context.Background(), role, metav1.DeleteOptions{}) })
		if _, err := cs.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
			ObjectMeta: metav1.ObjectMeta{Name: role},
			RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: role},
			Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Namespace: ns, Name: sa}},
		}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			_ = cs.RbacV1().ClusterRoleBindings().Delete(context.Background(), role, metav1.DeleteOptions{})
		})
		pod = sa + "-pod"
		no := false
		if _, err := cs.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{Name: pod},
			Spec: corev1.PodSpec{NodeName: node, ServiceAccountName: sa, AutomountServiceAccountToken: &no,
				Containers: []corev1.Container{{Name: "weftd", Image: "registry.invalid/weftd:test"}}},
		}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		kubeconfig = filepath.Join(t.TempDir(), sa+".kubeconfig")
		if _, err := cp.ServiceAccountKubeconfig(ctx, ns, sa, kubeconfig, time.Hour); err != nil {
			t.Fatal(err)
		}
		return kubeconfig, pod
	}
	open := func(kubeconfig, pod string, o Options) (*Store, error) {
		o.Kubeconfig, o.PodName, o.PodNamespace = kubeconfig, pod, ns
		if o.NetConfigPath == "" {
			o.NetConfigPath = writeNetConf(t, netConfV4)
		}
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
		s, err := Open(testCtx(t), o)
		if err == nil {
			t.Cleanup(s.Close)
		}
		return s, err
	}

	// Exactly flannel's ClusterRole.
	kc, pod := agent("flannel", flannel)
	s, err := open(kc, pod, Options{SetNodeNetworkUnavailable: true})
	if err != nil {
		t.Fatal(err)
	}
	if s.NodeName() != node {
		t.Fatalf("node name %q from pod %s/%s, want %q", s.NodeName(), ns, pod, node)
	}
	rec := startWatch(t, s)
	rec.snapshot(t)
	if _, _, err := s.NodePublicIPs(ctx); err != nil {
		t.Error(err)
	}
	l, err := s.Acquire(ctx, parseConf(t, netConfV4), vxlanAttrs("192.0.2.90", ""), lease.Hint{})
	if err != nil {
		t.Fatalf("Acquire with flannel's ClusterRole: %v", err)
	}
	rec.waitFor(t, "own lease", func(e lease.Event) bool { return e.Lease.Equal(l) })
	if err := s.Complete(ctx); err != nil {
		t.Fatalf("Complete with flannel's ClusterRole: %v", err)
	}
	got := waitNode(t, cs, node, func(n *corev1.Node) bool {
		return slices.ContainsFunc(n.Status.Conditions, func(c corev1.NodeCondition) bool { return c.Type == corev1.NodeNetworkUnavailable })
	})
	for _, c := range got.Status.Conditions {
		if c.Type == corev1.NodeNetworkUnavailable && (c.Status != corev1.ConditionFalse || c.Reason != "FlannelIsUp" ||
			c.Message != "Flannel is running on this node" || time.Since(c.LastTransitionTime.Time) > time.Minute || c.LastHeartbeatTime.IsZero()) {
			t.Errorf("condition %+v", c)
		}
	}

	// /readyz is public-info: the agent's weft_store_up needs no rule.
	if err := s.Ping(ctx); err != nil {
		t.Errorf("Ping with flannel's ClusterRole: %v", err)
	}

	// Without nodes/status patch.
	kc, pod = agent("nostatus", flannel[:2])
	s, err = open(kc, pod, Options{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = s.Acquire(ctx, parseConf(t, netConfV4), vxlanAttrs("192.0.2.91", ""), lease.Hint{})
	want := "patch nodes/status of node " + node + ": forbidden: the agent's ClusterRole needs nodes/status patch"
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("Acquire without nodes/status patch: %v\nwant it to say %q", err, want)
	}

	// Without pods get.
	kc, pod = agent("nopods", flannel[1:])
	if _, err := open(kc, pod, Options{}); err == nil || !strings.Contains(err.Error(), "forbidden: the agent's ClusterRole needs pods get") {
		t.Errorf("Open without pods get: %v", err)
	}

	// Without nodes list/watch the list never syncs.
	kc, pod = agent("nolist", []rbacv1.PolicyRule{flannel[0], {APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"get"}}, flannel[2]})
	_, err = open(kc, pod, Options{CacheSyncTimeout: 3 * time.Second})
	if err == nil || !strings.Contains(err.Error(), "needs nodes list and watch") || !strings.Contains(err.Error(), context.DeadlineExceeded.Error()) {
		t.Errorf("Open without nodes list: %v", err)
	}
	// CONT_WHEN_CACHE_NOT_READY=true goes on.
	if _, err := open(kc, pod, Options{CacheSyncTimeout: 3 * time.Second, ContinueWhenCacheNotReady: true}); err != nil {
		t.Errorf("Open without nodes list, continuing: %v", err)
	}
}

// A Watch started before the net-conf exists (or while it is invalid)
// waits for a usable one instead of failing, which would stop the agent.
func TestWatchWaitsForNetConf(t *testing.T) {
	cp := kubetest.Shared(t)
	path := filepath.Join(t.TempDir(), "net-conf.json")
	s, logs := openStore(t, cp.AdminConfig(), Options{NodeName: uniq("noconf"), NetConfigPath: path})
	if err := os.WriteFile(path, []byte(`{"Network":"10.244.0.0/16","SubnetLen":40}`), 0o644); err != nil {
		t.Fatal(err)
	}
	rec := startWatch(t, s)
	waitLog(t, logs, "waiting for a usable net-conf")
	rec.mu.Lock()
	early := len(rec.batches)
	rec.mu.Unlock()
	if early != 0 {
		t.Fatal("snapshot delivered with an invalid net-conf")
	}
	if err := os.WriteFile(path, []byte(netConfV4), 0o644); err != nil {
		t.Fatal(err)
	}
	rec.snapshot(t)
}

// Ping follows the API server: it fails once the server is gone.
func TestPing(t *testing.T) {
	cp := kubetest.Start(t)
	s, _ := openStore(t, cp.AdminConfig(), Options{NodeName: uniq("ping")})
	ctx := testCtx(t)
	if err := s.Ping(ctx); err != nil {
		t.Fatalf("Ping: %v", err)
	}
	if err := cp.Stop(); err != nil {
		t.Fatal(err)
	}
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := s.Ping(pctx); err == nil || !strings.Contains(err.Error(), "kubernetes API") {
		t.Fatalf("Ping with the API server stopped: %v", err)
	}
}
