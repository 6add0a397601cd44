package lab

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	kubemanifest "github.com/weft-net/weft/deploy/kube"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"

	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/kubecp"
	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/lease/kubeannot"
)

// The Kubernetes store benchmark's size and issue 9's targets.
const (
	kubeBenchNodes   = 5000
	kubeBenchAdds    = 200            // enough that p99 is not simply the slowest add
	kubeBenchNetwork = "10.64.0.0/11" // 8,192 /24s, clear of the service CIDR 10.96.0.0/12
	kubeBenchSubnets = 24
	// The bench's own API server: beside a --store kube lab's (6443), on
	// the control namespace's address, under an etcd prefix of its own.
	kubeBenchPort        = 6444
	targetKubeStartup    = 2 * time.Second
	targetKubeAddLatency = 20 * time.Millisecond
	targetKubePeakRSS    = 80 << 20
)

// kubeBenchmark is the agent with --kube-subnet-mgr in a large cluster.
func kubeBenchmark() Benchmark {
	return Benchmark{Name: "kube", Backends: []string{config.BackendVXLAN}, Run: benchKube}
}

// benchKube measures one weftd with --kube-subnet-mgr against an API server
// that already holds 5,000 Nodes with podCIDRs and flannel's annotations:
// the time from its start until all their routes are in the kernel, the
// time from one more Node created (podCIDR and annotations included) to its
// route, and its peak RSS. The control plane is the bench's own (real
// kube-apiserver and controller-manager, in the lab's control namespace,
// on the lab's etcd under a prefix of its own), so that the lab's agents,
// if they use the Kubernetes store, neither see the 5,000 Nodes nor bear
// their load. The Nodes get their podCIDRs at create time, inside the
// cluster CIDR, so node IPAM only records them; their public IPs are in
// 198.18.0.0/15, which the vxlan backend programs without sending anything.
func benchKube(ctx context.Context, l *Lab, o BenchOptions) ([]Result, error) {
	network := netip.MustParsePrefix(kubeBenchNetwork)
	// Subnet 0 is the agent's own; the added Nodes come after the others.
	fakes, err := fakeVXLANLeases(network, kubeBenchSubnets, 1, kubeBenchNodes)
	if err != nil {
		return nil, err
	}
	adds, err := fakeVXLANLeases(network, kubeBenchSubnets, 1+kubeBenchNodes, kubeBenchAdds)
	if err != nil {
		return nil, err
	}
	keys, err := kubeannot.NewKeys(kubeannot.DefaultPrefix)
	if err != nil {
		return nil, err
	}
	binDir := o.Lab.KubeBinDir
	if binDir == "" {
		binDir = l.KubeBinDir
	}
	if binDir == "" {
		if binDir, err = kubecp.DefaultBinDir(); err != nil {
			return nil, err
		}
	}

	var suffix [3]byte
	_, _ = rand.Read(suffix[:])
	id := hex.EncodeToString(suffix[:])
	etcdPrefix := "/weft-bench-kube-" + id
	dataDir := filepath.Join(l.Dir, "bench-kube-"+id)
	defer func() {
		// A fresh budget: ctx may be what ended the run.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if cli, err := l.StoreClient(cctx); err == nil {
			_, _ = cli.Delete(cctx, etcdPrefix+"/", clientv3.WithPrefix())
			cli.Close()
		}
		_ = os.RemoveAll(dataDir)
	}()

	o.progress("  starting kube-apiserver and kube-controller-manager (%s) in %s", binDir, l.ControlNS)
	ctl := l.ControlNS
	cp, err := kubecp.Start(ctx, kubecp.Config{
		BinDir:               binDir,
		DataDir:              dataDir,
		EtcdServers:          l.EtcdEndpoints(),
		EtcdPrefix:           etcdPrefix + "/registry",
		Address:              netip.MustParseAddr(ctlAddr),
		Port:                 kubeBenchPort,
		ClusterCIDRs:         []netip.Prefix{network},
		NodeCIDRMaskSizeIPv4: kubeBenchSubnets,
		Command: func(bin string, args []string) *exec.Cmd {
			cmd := exec.Command("ip", append([]string{"netns", "exec", ctl, bin}, args...)...)
			// Stopped below; should this process die first, Down finds
			// them in the control namespace.
			cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
			return cmd
		},
		DialContext: dialInNS(ctl),
		Logger:      l.log,
	})
	if err != nil {
		return nil, err
	}
	defer func() { _ = cp.Stop() }()
	adminCfg := cp.AdminConfig()
	adminCfg.QPS, adminCfg.Burst = -1, 0 // no client-side rate limit: the writes are the setup, not the figure
	adminCfg.ContentType = "application/vnd.kubernetes.protobuf"
	cs, err := kubernetes.NewForConfig(adminCfg)
	if err != nil {
		return nil, err
	}
	if err := kubemanifest.ApplyAgentRBAC(ctx, cs); err != nil {
		return nil, err
	}

	o.progress("  creating %d Nodes with podCIDRs and annotations", len(fakes))
	t0 := time.Now()
	err = parallel(ctx, len(fakes), 32, func(i int) error {
		return createBenchNode(ctx, cs, keys, fmt.Sprintf("bench-%05d", i+1), fakes[i])
	})
	if err != nil {
		return nil, err
	}
	o.progress("  %d Nodes created in %s", len(fakes), time.Since(t0).Round(time.Millisecond))

	node, err := l.addBenchNode(ctx)
	if err != nil {
		return nil, err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		// The agent's log outlives its node, for a look at what it did.
		if data, err := os.ReadFile(node.log); err == nil {
			_ = os.WriteFile(filepath.Join(l.Dir, "bench-kube-weftd.log"), data, 0o644)
		}
		node.remove(cctx)
	}()
	// The agent's own Node, as a 5,000-node cluster has it when the
	// DaemonSet's pod starts: registered, with its podCIDR.
	selfName := "bench-self-" + id
	self := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: selfName, Labels: map[string]string{"kubernetes.io/os": "linux"}},
		Spec: corev1.NodeSpec{
			PodCIDR:  subnetAt(network, kubeBenchSubnets, 0).String(),
			PodCIDRs: []string{subnetAt(network, kubeBenchSubnets, 0).String()},
		},
		Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: node.addr.String()}}},
	}
	if _, err := cs.CoreV1().Nodes().Create(ctx, self, metav1.CreateOptions{}); err != nil {
		return nil, fmt.Errorf("create Node %s: %w", selfName, err)
	}
	kubeconfig := filepath.Join(node.dir, "kubeconfig")
	if _, err := cp.ServiceAccountKubeconfig(ctx, agentNamespace, agentServiceAccount, kubeconfig, time.Hour); err != nil {
		return nil, fmt.Errorf("agent kubeconfig: %w", err)
	}
	netConf := filepath.Join(node.dir, "net-conf.json")
	conf := fmt.Sprintf(`{"Network":%q,"SubnetLen":%d,"Backend":{"Type":"vxlan"}}`+"\n", network, kubeBenchSubnets)
	if err := os.WriteFile(netConf, []byte(conf), 0o644); err != nil {
		return nil, err
	}

	rw, err := watchRoutes(ctx, node.ns)
	if err != nil {
		return nil, err
	}
	defer rw.close()

	args := []string{
		"--kube-subnet-mgr",
		"--kubeconfig-file=" + kubeconfig,
		"--net-config-path=" + netConf,
		"--iface=eth0",
		"--subnet-file=" + filepath.Join(node.dir, "subnet.env"),
	}
	want := map[netip.Prefix]bool{}
	for _, f := range fakes {
		want[f.Subnet] = true
	}
	pid, startup, selfNote, err := startTimed(ctx, filepath.Join(l.BinDir, "weftd"), node, args, []string{"NODE_NAME=" + selfName}, "Nodes", want, rw, o)
	if err != nil {
		return nil, err
	}
	// Time single events on a quiet agent: once the start-up's own work
	// (its annotations, its NetworkUnavailable condition, the GC after the
	// node list) is over.
	if err := waitQuiet(ctx, pid, 300*time.Millisecond, 10*time.Second); err != nil {
		o.progress("  %v; measuring anyway", err)
	}

	// A watch of the bench's own tells how much of each latency is the
	// API server's: when it delivers the new Node to a watcher.
	seen, err := watchNodeAdds(ctx, cs)
	if err != nil {
		return nil, err
	}

	// One Node at a time, each created while the agent is quiet.
	var lat, creates, api, own []time.Duration
	for i, a := range adds {
		time.Sleep(50 * time.Millisecond)
		t0 := time.Now()
		name := fmt.Sprintf("bench-add-%03d", i+1)
		if err := createBenchNode(ctx, cs, keys, name, a); err != nil {
			return nil, err
		}
		creates = append(creates, time.Since(t0))
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		at, _, err := rw.waitAt(wctx, map[netip.Prefix]bool{a.Subnet: true}, pid)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("route for new Node with podCIDR %s: %w", a.Subnet, err)
		}
		lat = append(lat, at.Sub(t0))
		if w, ok := seen.at(name, time.Second); ok {
			api = append(api, w.Sub(t0))
			own = append(own, at.Sub(w))
		}
	}
	seen.stop()
	med, p99 := quantile(lat, 0.5), quantile(lat, 0.99)
	o.progress("  new Node -> route: p50 %s, p99 %s; all: %v", med.Round(10*time.Microsecond), p99.Round(10*time.Microsecond), roundAll(lat))
	o.progress("  new Node -> a watch of the bench's: %v", roundAll(api))
	hwm, anon, file, err := memoryOf(pid)
	if err != nil {
		return nil, err
	}

	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	return []Result{
		{Section: "kube", Metric: fmt.Sprintf("start → %d Nodes' routes", len(fakes)), Value: startup.Seconds(), Unit: "s",
			Note: fmt.Sprintf("%s target ≤ %s; --kube-subnet-mgr, ServiceAccount token%s", verdict(startup.Seconds(), targetKubeStartup.Seconds(), true), targetKubeStartup, selfNote)},
		{Section: "kube", Metric: "new Node → route, p50", Value: ms(med), Unit: "ms",
			Note: fmt.Sprintf("%d Nodes created one at a time, from Create sent (Create itself: p50 %.1f ms; the API server's watch delivers it: p50 %.1f ms)",
				len(lat), ms(quantile(creates, 0.5)), ms(quantile(api, 0.5)))},
		{Section: "kube", Metric: "new Node → route, p99", Value: ms(p99), Unit: "ms",
			Note: fmt.Sprintf("%s target ≤ %s (the API server's watch: p99 %.1f ms)", verdict(ms(p99), ms(targetKubeAddLatency), true), targetKubeAddLatency, ms(quantile(api, 0.99)))},
		{Section: "kube", Metric: "bench's watch → route, p50", Value: ms(quantile(own, 0.5)), Unit: "ms",
			Note: fmt.Sprintf("the agent's share: from the API server's delivery to a watch of the bench's; p99 %.1f ms", ms(quantile(own, 0.99)))},
		{Section: "kube", Metric: "peak RSS (VmHWM)", Value: float64(hwm) / (1 << 20), Unit: "MiB",
			Note: fmt.Sprintf("%s target ≤ %d MiB; %d Nodes; at the end RssAnon %d MiB, RssFile %d MiB (the binary's pages)",
				verdict(float64(hwm), targetKubePeakRSS, true), targetKubePeakRSS>>20, len(fakes)+len(adds)+1, anon>>20, file>>20)},
	}, nil
}

// createBenchNode creates a Node as it is once its agent has run: podCIDR
// from node IPAM (here given at create time), the InternalIP kubelet
// registers, and the annotations of a vxlan lease.
func createBenchNode(ctx context.Context, cs kubernetes.Interface, keys kubeannot.Keys, name string, l lease.Lease) error {
	ann, err := keys.Published(nil, l.Attrs)
	if err != nil {
		return fmt.Errorf("annotations for Node %s: %w", name, err)
	}
	n := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name:        name,
			Labels:      map[string]string{"kubernetes.io/os": "linux", "kubernetes.io/hostname": name},
			Annotations: ann,
		},
		Spec: corev1.NodeSpec{PodCIDR: l.Subnet.String(), PodCIDRs: []string{l.Subnet.String()}},
		Status: corev1.NodeStatus{Addresses: []corev1.NodeAddress{
			{Type: corev1.NodeInternalIP, Address: l.Attrs.PublicIP.String()},
			{Type: corev1.NodeHostName, Address: name},
		}},
	}
	if _, err := cs.CoreV1().Nodes().Create(ctx, n, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("create Node %s: %w", name, err)
	}
	return nil
}

// nodeAdds records when a watch of Nodes saw each one added.
type nodeAdds struct {
	stop func()
	mu   sync.Mutex
	seen map[string]time.Time
	cond chan struct{} // closed and replaced on each add
}

// watchNodeAdds watches Nodes from now on.
func watchNodeAdds(ctx context.Context, cs kubernetes.Interface) (*nodeAdds, error) {
	list, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{Limit: 1})
	if err != nil {
		return nil, fmt.Errorf("list Nodes: %w", err)
	}
	w, err := cs.CoreV1().Nodes().Watch(ctx, metav1.ListOptions{ResourceVersion: list.ResourceVersion})
	if err != nil {
		return nil, fmt.Errorf("watch Nodes: %w", err)
	}
	a := &nodeAdds{stop: w.Stop, seen: map[string]time.Time{}, cond: make(chan struct{})}
	go func() {
		for ev := range w.ResultChan() {
			n, ok := ev.Object.(*corev1.Node)
			if ev.Type != watch.Added || !ok {
				continue
			}
			at := time.Now()
			a.mu.Lock()
			a.seen[n.Name] = at
			close(a.cond)
			a.cond = make(chan struct{})
			a.mu.Unlock()
		}
	}()
	return a, nil
}

// at returns when Node name was seen added, waiting up to timeout.
func (a *nodeAdds) at(name string, timeout time.Duration) (time.Time, bool) {
	deadline := time.After(timeout)
	for {
		a.mu.Lock()
		t, ok := a.seen[name]
		cond := a.cond
		a.mu.Unlock()
		if ok {
			return t, true
		}
		select {
		case <-cond:
		case <-deadline:
			return time.Time{}, false
		}
	}
}

func roundAll(ds []time.Duration) []time.Duration {
	out := make([]time.Duration, len(ds))
	for i, d := range ds {
		out[i] = d.Round(100 * time.Microsecond)
	}
	return out
}

// waitQuiet waits until pid has used at most one clock tick of CPU over a
// window, for at most limit.
func waitQuiet(ctx context.Context, pid int, window, limit time.Duration) error {
	cpu := func() (time.Duration, error) {
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			return 0, err
		}
		return parsePIDStatCPU(stat)
	}
	deadline := time.Now().Add(limit)
	prev, err := cpu()
	if err != nil {
		return err
	}
	for time.Now().Before(deadline) {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(window):
		}
		cur, err := cpu()
		if err != nil {
			return err
		}
		if cur-prev <= time.Second/clockTick {
			return nil
		}
		prev = cur
	}
	return fmt.Errorf("weftd still busy after %s", limit)
}
