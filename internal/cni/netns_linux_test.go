package cni_test

// These tests run the plugin as a runtime does: the weft-cni binary,
// installed as "flannel" beside the real bridge, host-local, portmap and
// loopback, driven through libcni and through cnitool, in a node namespace
// and pod namespaces the test creates.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/containernetworking/cni/pkg/types"

	weftcni "github.com/weft-net/weft/internal/cni"
	"github.com/weft-net/weft/internal/cni/cnirig"
	"github.com/weft-net/weft/internal/netlinkx"
	"github.com/weft-net/weft/internal/netlinkx/nstest"
	"github.com/weft-net/weft/internal/subnetenv"
)

// The plugins are built once per run, on first use.
var plugins struct {
	once sync.Once
	dir  string
	err  error
}

func TestMain(m *testing.M) {
	code := m.Run()
	if plugins.dir != "" {
		os.RemoveAll(plugins.dir)
	}
	os.Exit(code)
}

func binDir(t *testing.T) string {
	t.Helper()
	nstest.RequireRoot(t)
	plugins.once.Do(func() {
		plugins.dir, plugins.err = os.MkdirTemp("", "weft-cni-bin-")
		if plugins.err == nil {
			plugins.err = cnirig.Build(context.Background(), plugins.dir)
		}
	})
	if plugins.err != nil {
		t.Fatalf("build CNI plugins: %v", plugins.err)
	}
	return plugins.dir
}

// The node's subnet.env: an MTU other than the 1500 default, so that the
// pod's MTU shows it came from the file.
var nodeEnv = subnetenv.Env{
	Network: netip.MustParsePrefix("10.244.0.0/16"),
	Subnet:  netip.MustParsePrefix("10.244.5.1/24"),
	MTU:     1400,
	IPMasq:  true, // the agent masquerades; the bridge adds no rules
}

func newNode(t *testing.T, cniVersion string) *cnirig.Node {
	t.Helper()
	return newNodeEnv(t, nodeEnv, cniVersion)
}

// newNodeEnv is a node whose subnet.env is env.
func newNodeEnv(t *testing.T, env subnetenv.Env, cniVersion string) *cnirig.Node {
	t.Helper()
	n, err := cnirig.NewNode(t.TempDir(), binDir(t), env, cniVersion)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := n.Close(); err != nil {
			t.Errorf("remove node netns: %v", err)
		}
	})
	return n
}

func newPod(t *testing.T) *cnirig.Pod {
	t.Helper()
	p, err := cnirig.NewPod()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("remove pod netns: %v", err)
		}
	})
	return p
}

// podView is what the pod's namespace holds, read independently of the
// plugin's own CHECK code.
type podView struct {
	found  bool
	mtu    int
	addrs  []netip.Prefix   // IPv4
	routes []netlinkx.Route // both families
}

func viewPod(t *testing.T, p *cnirig.Pod) podView {
	t.Helper()
	h, err := netlinkx.NewAt(p.NS.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	l, err := h.LinkByName(p.IfName)
	if netlinkx.IsNotFound(err) {
		return podView{}
	}
	if err != nil {
		t.Fatal(err)
	}
	v := podView{found: true, mtu: l.Attrs().MTU}
	if v.addrs, err = h.AddrList(l, netlinkx.FamilyV4); err != nil {
		t.Fatal(err)
	}
	if v.routes, err = h.RouteList(netlinkx.RouteFilter{Family: netlinkx.FamilyAll, LinkIndex: l.Attrs().Index}); err != nil {
		t.Fatal(err)
	}
	return v
}

func (v podView) route(dst netip.Prefix) (netlinkx.Route, bool) {
	for _, r := range v.routes {
		if r.Dst == dst {
			return r, true
		}
	}
	return netlinkx.Route{}, false
}

// wantPodWired checks the pod as ADD must leave it and returns its address.
func wantPodWired(t *testing.T, p *cnirig.Pod) netip.Prefix {
	t.Helper()
	v := viewPod(t, p)
	if !v.found {
		t.Fatalf("pod %s: no %s after ADD", p.ID, p.IfName)
	}
	if v.mtu != nodeEnv.MTU {
		t.Errorf("pod %s: MTU %d, want FLANNEL_MTU %d", p.ID, v.mtu, nodeEnv.MTU)
	}
	if len(v.addrs) != 1 || !nodeEnv.Subnet.Masked().Contains(v.addrs[0].Addr()) ||
		v.addrs[0].Addr() == nodeEnv.Subnet.Addr() || v.addrs[0].Bits() != nodeEnv.Subnet.Bits() {
		t.Fatalf("pod %s: addresses %v, want one in %s other than the gateway", p.ID, v.addrs, nodeEnv.Subnet.Masked())
	}
	r, ok := v.route(nodeEnv.Network)
	if !ok || r.Gw != nodeEnv.Subnet.Addr() {
		t.Errorf("pod %s: routes %v, want %s via %s", p.ID, v.routes, nodeEnv.Network, nodeEnv.Subnet.Addr())
	}
	return v.addrs[0]
}

// wantCheckFailsWithoutRoute deletes the pod's route r and wants CHECK to
// fail with CodeCheckFailed, naming the interface and the route.
func wantCheckFailsWithoutRoute(t *testing.T, ctx context.Context, node *cnirig.Node, pod *cnirig.Pod, r netlinkx.Route) {
	t.Helper()
	h, err := netlinkx.NewAt(pod.NS.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if err := h.RouteDel(r); err != nil {
		t.Fatal(err)
	}
	err = node.Check(ctx, pod)
	var te *types.Error
	if !errors.As(err, &te) {
		t.Fatalf("CHECK without the route to %s: got %v, want a CNI error", r.Dst, err)
	}
	if want := "route to " + r.Dst.String() + " missing"; te.Code != weftcni.CodeCheckFailed || !strings.Contains(te.Msg, want) || !strings.Contains(te.Msg, pod.IfName) {
		t.Errorf("CHECK without the route to %s: code %d %q, want code %d naming %s and %q", r.Dst, te.Code, te.Msg, weftcni.CodeCheckFailed, pod.IfName, want)
	}
}

// wantCheckFailsWithoutAddr deletes the pod's address a and wants CHECK to
// fail naming it, and no other address.
func wantCheckFailsWithoutAddr(t *testing.T, ctx context.Context, node *cnirig.Node, pod *cnirig.Pod, a netip.Prefix, others ...netip.Prefix) {
	t.Helper()
	h, err := netlinkx.NewAt(pod.NS.Path())
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	l, err := h.LinkByName(pod.IfName)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.AddrDel(l, a); err != nil {
		t.Fatal(err)
	}
	err = node.Check(ctx, pod)
	var te *types.Error
	if !errors.As(err, &te) {
		t.Fatalf("CHECK without the address %s: got %v, want a CNI error", a, err)
	}
	if want := "address " + a.String() + " missing"; te.Code != weftcni.CodeCheckFailed || !strings.Contains(te.Msg, want) || !strings.Contains(te.Msg, pod.IfName) {
		t.Errorf("CHECK without the address %s: code %d %q, want code %d naming %s and %q", a, te.Code, te.Msg, weftcni.CodeCheckFailed, pod.IfName, want)
	}
	for _, o := range others {
		if strings.Contains(te.Msg, "address "+o.String()) {
			t.Errorf("CHECK without the address %s: %q also blames %s, which is in place", a, te.Msg, o)
		}
	}
}

func wantNodeClean(t *testing.T, n *cnirig.Node) {
	t.Helper()
	if err := n.CheckEmpty(); err != nil {
		t.Error(err)
	}
}

func TestAddCheckDelLibcni(t *testing.T) {
	ctx := context.Background()
	node := newNode(t, "1.0.0")
	pod := newPod(t)

	res, err := node.Add(ctx, pod)
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	addr := wantPodWired(t, pod)
	if len(res.IPs) != 1 || res.IPs[0].Address.IP.String() != addr.Addr().String() {
		t.Errorf("ADD result IPs %v, pod has %s", res.IPs, addr)
	}
	if ips, _ := node.AllocatedIPs(); !slices.Equal(ips, []netip.Addr{addr.Addr()}) {
		t.Errorf("host-local holds %v, want [%s]", ips, addr.Addr())
	}
	st, err := os.Stat(filepath.Join(node.DataDir, pod.ID))
	if err != nil {
		t.Fatalf("saved delegate config: %v", err)
	}
	if st.Mode().Perm() != 0o600 {
		t.Errorf("saved delegate config mode %v, want 0600", st.Mode().Perm())
	}

	if err := node.Check(ctx, pod); err != nil {
		t.Fatalf("CHECK of a healthy pod: %v", err)
	}

	// Take the cluster route away: CHECK must say so.
	r, ok := viewPod(t, pod).route(nodeEnv.Network)
	if !ok {
		t.Fatal("no cluster route to delete")
	}
	wantCheckFailsWithoutRoute(t, ctx, node, pod, r)

	if err := node.Del(ctx, pod); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	if viewPod(t, pod).found {
		t.Error("pod interface still there after DEL")
	}
	wantNodeClean(t, node)
	// DEL again (runtimes retry): still fine.
	if err := node.Del(ctx, pod); err != nil {
		t.Errorf("second DEL: %v", err)
	}
}

// With WEFT_GSO_IPV4_MAX_SIZE in subnet.env (host-gw over a BIG TCP
// underlay), ADD raises the GSO and GRO limits of the pod's interface, the
// veth's host end and the bridge; without it they keep the kernel's 64 KiB.
func TestAddRaisesGSOForBigTCP(t *testing.T) {
	ctx := context.Background()
	const size = 196608
	for _, tc := range []struct {
		name string
		env  int
		want uint32
	}{{"big-tcp", size, size}, {"default", 0, 65536}} {
		t.Run(tc.name, func(t *testing.T) {
			env := nodeEnv
			env.GSOIPv4MaxSize = tc.env
			node := newNodeEnv(t, env, "1.0.0")
			pod := newPod(t)
			if _, err := node.Add(ctx, pod); err != nil {
				t.Fatalf("ADD: %v", err)
			}
			links := map[string]netlinkx.LinkAttrs{}
			for nsPath, names := range map[string][]string{node.NS.Path(): nil, pod.NS.Path(): {pod.IfName}} {
				h, err := netlinkx.NewAt(nsPath)
				if err != nil {
					t.Fatal(err)
				}
				defer h.Close()
				ls, err := h.LinkList()
				if err != nil {
					t.Fatal(err)
				}
				for _, l := range ls {
					a := *l.Attrs()
					if names == nil && (l.Type() == "bridge" || l.Type() == "veth") || slices.Contains(names, a.Name) {
						links[nsPath+" "+a.Name] = a
					}
				}
			}
			if len(links) != 3 {
				t.Fatalf("found %d of bridge, host veth and pod interface: %v", len(links), slices.Collect(maps.Keys(links)))
			}
			for name, a := range links {
				if a.GSOIPv4MaxSize != tc.want || a.GROIPv4MaxSize != tc.want {
					t.Errorf("%s: gso_ipv4_max_size %d gro_ipv4_max_size %d, want %d", name, a.GSOIPv4MaxSize, a.GROIPv4MaxSize, tc.want)
				}
			}
			if err := node.Del(ctx, pod); err != nil {
				t.Fatalf("DEL: %v", err)
			}
		})
	}
}

// cnitool runs cnitool in the node's namespace, as an operator would by hand.
func cnitool(t *testing.T, n *cnirig.Node, args ...string) (string, error) {
	t.Helper()
	var out []byte
	err := n.Do(func() error {
		cmd := exec.Command(filepath.Join(n.BinDir, "cnitool"), args...)
		cmd.Env = append(os.Environ(), "NETCONFPATH="+n.ConfDir, "CNI_PATH="+n.BinDir)
		var err error
		out, err = cmd.CombinedOutput()
		return err
	})
	return string(out), err
}

func TestCNITool(t *testing.T) {
	node := newNode(t, "1.1.0")
	pod := newPod(t)
	nsPath := pod.NS.Path()
	// cnitool caches results under /var/lib/cni; a DEL removes its entry,
	// also when the test fails half-way.
	t.Cleanup(func() { cnitool(t, node, "del", cnirig.NetworkName, nsPath) })

	if out, err := cnitool(t, node, "status", cnirig.NetworkName, nsPath); err != nil {
		t.Fatalf("cnitool status: %v\n%s", err, out)
	}
	out, err := cnitool(t, node, "add", cnirig.NetworkName, nsPath)
	if err != nil {
		t.Fatalf("cnitool add: %v\n%s", err, out)
	}
	var res struct {
		CNIVersion string `json:"cniVersion"`
		IPs        []struct {
			Address string `json:"address"`
		} `json:"ips"`
	}
	if err := json.Unmarshal([]byte(out), &res); err != nil {
		t.Fatalf("cnitool add printed %q: %v", out, err)
	}
	addr := wantPodWired(t, pod)
	if res.CNIVersion != "1.1.0" || len(res.IPs) != 1 || res.IPs[0].Address != addr.String() {
		t.Errorf("cnitool add result %+v, pod has %s", res, addr)
	}
	if out, err := cnitool(t, node, "check", cnirig.NetworkName, nsPath); err != nil {
		t.Fatalf("cnitool check of a healthy pod: %v\n%s", err, out)
	}

	// An MTU that is not FLANNEL_MTU is reported as such.
	h, err := netlinkx.NewAt(nsPath)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	l, err := h.LinkByName(pod.IfName)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetMTU(l, 1300); err != nil {
		t.Fatal(err)
	}
	out, err = cnitool(t, node, "check", cnirig.NetworkName, nsPath)
	if err == nil || !strings.Contains(out, "MTU is 1300, want 1400") {
		t.Errorf("cnitool check with a wrong MTU: %v\n%s", err, out)
	}

	if out, err := cnitool(t, node, "del", cnirig.NetworkName, nsPath); err != nil {
		t.Fatalf("cnitool del: %v\n%s", err, out)
	}
	if viewPod(t, pod).found {
		t.Error("pod interface still there after cnitool del")
	}
	wantNodeClean(t, node)

	// Without subnet.env the plugin is not ready.
	if err := os.Remove(node.SubnetFile); err != nil {
		t.Fatal(err)
	}
	out, err = cnitool(t, node, "status", cnirig.NetworkName, nsPath)
	if err == nil || !strings.Contains(out, "is weftd running on this node?") {
		t.Errorf("cnitool status without subnet.env: %v\n%s", err, out)
	}
}

// flannel's conflist version (0.3.1), as deployed: 100 pods in, 100 out,
// nothing left.
func TestHundredPods(t *testing.T) {
	ctx := context.Background()
	node := newNode(t, "0.3.1")
	const n = 100
	pods := make([]*cnirig.Pod, n)
	seen := map[netip.Addr]bool{}
	for i := range pods {
		pods[i] = newPod(t)
		if _, err := node.Add(ctx, pods[i]); err != nil {
			t.Fatalf("ADD pod %d: %v", i, err)
		}
		a := wantPodWired(t, pods[i]).Addr()
		if seen[a] {
			t.Fatalf("pod %d got %s twice", i, a)
		}
		seen[a] = true
	}
	if ips, _ := node.AllocatedIPs(); len(ips) != n {
		t.Errorf("host-local holds %d addresses, want %d", len(ips), n)
	}
	if veths, _ := node.Veths(); len(veths) != n {
		t.Errorf("node has %d veths, want %d", len(veths), n)
	}
	for i, p := range pods {
		if err := node.Del(ctx, p); err != nil {
			t.Fatalf("DEL pod %d: %v", i, err)
		}
	}
	wantNodeClean(t, node)
}

// DEL works without what ADD left: without subnet.env (the agent stopped,
// the node is being drained) it uses the saved delegate config; without
// that (a lost data dir) it renders the config again from subnet.env.
// Either way the pod is unwired and its address freed, and DEL of a
// container this node never saw succeeds.
func TestDelWithout(t *testing.T) {
	for _, tc := range []struct {
		name string
		path func(*cnirig.Node) string
	}{
		{"subnet.env", func(n *cnirig.Node) string { return n.SubnetFile }},
		{"saved config", func(n *cnirig.Node) string { return n.DataDir }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			node := newNode(t, "1.0.0")
			pod := newPod(t)
			if _, err := node.Add(ctx, pod); err != nil {
				t.Fatal(err)
			}
			if err := os.RemoveAll(tc.path(node)); err != nil {
				t.Fatal(err)
			}
			if err := node.Del(ctx, pod); err != nil {
				t.Fatalf("DEL without %s: %v", tc.name, err)
			}
			if viewPod(t, pod).found {
				t.Error("pod interface still there after DEL")
			}
			wantNodeClean(t, node)
			if err := node.Del(ctx, newPod(t)); err != nil {
				t.Errorf("DEL of an unknown container without %s: %v", tc.name, err)
			}
		})
	}
}

// A failed ADD leaves nothing behind: a delegate ADD that fails half-way
// (after host-local allocated an address and the veth exists: a gateway
// the bridge cannot reach), or a delegate config refused before anything
// is made.
func TestFailedAddLeavesNothing(t *testing.T) {
	for _, tc := range []struct {
		name string
		keys func(*cnirig.Node) string // of the flannel plugin, beside type, subnetFile and dataDir
		code uint                      // 0: any
		want string
	}{
		{"delegate ADD fails half-way", func(n *cnirig.Node) string {
			return fmt.Sprintf(`"ipam":{"dataDir":%q,"routes":[{"dst":"10.99.0.0/16","gw":"192.0.2.77"}]},
				"delegate":{"hairpinMode":true,"isDefaultGateway":true}`, n.IPAMDir)
		}, 0, "delegate bridge ADD"},
		{"delegate with a name", func(*cnirig.Node) string { return `"delegate":{"name":"mine"}` },
			types.ErrInvalidNetworkConfig, `delegate must not set "name"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			node := newNode(t, "1.0.0")
			conf := fmt.Sprintf(`{"name":%q,"cniVersion":"1.0.0","plugins":[{"type":"flannel","subnetFile":%q,"dataDir":%q,%s}]}`,
				cnirig.NetworkName, node.SubnetFile, node.DataDir, tc.keys(node))
			if err := node.SetConflist([]byte(conf)); err != nil {
				t.Fatal(err)
			}
			pod := newPod(t)
			_, err := node.Add(ctx, pod)
			var te *types.Error
			if !errors.As(err, &te) || tc.code != 0 && te.Code != tc.code || !strings.Contains(te.Msg, tc.want) {
				t.Fatalf("ADD: got %v, want a CNI error (code %d) with %q", err, tc.code, tc.want)
			}
			t.Logf("ADD failed as intended: code %d: %s", te.Code, te.Msg)
			if viewPod(t, pod).found {
				t.Error("pod interface left after a failed ADD")
			}
			wantNodeClean(t, node)
		})
	}
}

// dualStackEnv is nodeEnv with an IPv6 network and subnet too.
func dualStackEnv() subnetenv.Env {
	env := nodeEnv
	env.IPv6Network = netip.MustParsePrefix("fd00:10:244::/56")
	env.IPv6Subnet = netip.MustParsePrefix("fd00:10:244:5::1/64")
	return env
}

// TestDualStackAddCheckDel: with both families in subnet.env the pod gets
// an address from each range and a route to each network; CHECK passes,
// and fails naming the IPv6 network once its route is gone.
func TestDualStackAddCheckDel(t *testing.T) {
	ctx := context.Background()
	env := dualStackEnv()
	node := newNodeEnv(t, env, "1.0.0")
	pod := newPod(t)
	res, err := node.Add(ctx, pod)
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	var got4, got6 netip.Addr
	var pfx4, pfx6 netip.Prefix
	for _, ip := range res.IPs {
		a, _ := netip.AddrFromSlice(ip.Address.IP)
		ones, _ := ip.Address.Mask.Size()
		switch a = a.Unmap(); {
		case a.Is4():
			got4, pfx4 = a, netip.PrefixFrom(a, ones)
		case a.Is6():
			got6, pfx6 = a, netip.PrefixFrom(a, ones)
		}
	}
	if !env.Subnet.Masked().Contains(got4) || !env.IPv6Subnet.Masked().Contains(got6) {
		t.Fatalf("ADD result IPs %v, want one in %s and one in %s", res.IPs, env.Subnet.Masked(), env.IPv6Subnet.Masked())
	}
	v := viewPod(t, pod)
	r6, _ := v.route(env.IPv6Network)
	if r6.Gw != env.IPv6Subnet.Addr() {
		t.Fatalf("pod routes %v, want %s via %s", v.routes, env.IPv6Network, env.IPv6Subnet.Addr())
	}
	if err := node.Check(ctx, pod); err != nil {
		t.Fatalf("CHECK of a healthy dual-stack pod: %v", err)
	}
	wantCheckFailsWithoutRoute(t, ctx, node, pod, r6)
	wantCheckFailsWithoutAddr(t, ctx, node, pod, pfx6, pfx4)
	if err := node.Del(ctx, pod); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	wantNodeClean(t, node)
}

// The plugin runs the default bridge delegate in process; a pod it adds
// must be exactly what the bridge plugin's own ADD makes (execDelegate),
// on both families: the same result but for names, MACs and addresses, the
// same pod and host state (sysctls, hairpin, master, MTU, routes), and the
// bridge plugin CHECKs and DELs it.
func TestInProcessBridgeMatchesBinary(t *testing.T) {
	ctx := context.Background()
	env := dualStackEnv()
	node := newNodeEnv(t, env, "1.0.0")
	// The plugin's timings tell which way each ADD went.
	timings := filepath.Join(t.TempDir(), "timings.jsonl")
	t.Setenv(weftcni.TimingsEnv, timings)
	conflist := func(viaBinary bool) []byte {
		data, err := cnirig.Conflist("1.0.0", node.SubnetFile, node.DataDir, node.IPAMDir)
		if err != nil {
			t.Fatal(err)
		}
		var l map[string]any
		if err := json.Unmarshal(data, &l); err != nil {
			t.Fatal(err)
		}
		l["plugins"].([]any)[0].(map[string]any)["execDelegate"] = viaBinary
		if data, err = json.Marshal(l); err != nil {
			t.Fatal(err)
		}
		return data
	}
	type added struct {
		pod   *cnirig.Pod
		res   string // the result with what differs per pod taken out
		state string // the pod's and its host veth's state, as above
	}
	add := func(viaBinary bool) added {
		if err := node.SetConflist(conflist(viaBinary)); err != nil {
			t.Fatal(err)
		}
		pod := newPod(t)
		res, err := node.Add(ctx, pod)
		if err != nil {
			t.Fatalf("ADD (execDelegate %v): %v", viaBinary, err)
		}
		if len(res.Interfaces) != 3 || !strings.HasPrefix(res.Interfaces[1].Name, "veth") || len(res.Interfaces[1].Name) != 12 ||
			res.Interfaces[2].Sandbox != pod.NS.Path() {
			t.Fatalf("ADD (execDelegate %v): interfaces %v", viaBinary, res.Interfaces)
		}
		hostVeth := res.Interfaces[1].Name
		var b strings.Builder
		for i, ifc := range res.Interfaces {
			fmt.Fprintf(&b, "if%d mac=%v sandbox=%v; ", i, ifc.Mac != "", ifc.Sandbox != "")
		}
		b.WriteString(res.Interfaces[0].Name + "; ")
		for _, ip := range res.IPs {
			ones, _ := ip.Address.Mask.Size()
			fmt.Fprintf(&b, "ip /%d gw %s if %d; ", ones, ip.Gateway, *ip.Interface)
		}
		for _, r := range res.Routes {
			fmt.Fprintf(&b, "route %s via %s; ", r.Dst.String(), r.GW)
		}
		fmt.Fprintf(&b, "dns %v", res.DNS)

		var s strings.Builder
		run := func(nsPath string, args ...string) string {
			out, err := exec.Command("nsenter", append([]string{"--net=" + nsPath}, args...)...).CombinedOutput()
			if err != nil {
				t.Fatalf("%v: %v: %s", args, err, out)
			}
			return strings.TrimSpace(string(out))
		}
		for _, k := range []string{"ipv6/conf/eth0/accept_dad", "ipv4/conf/eth0/arp_notify", "ipv6/conf/eth0/keep_addr_on_down",
			"ipv6/conf/eth0/disable_ipv6", "ipv6/conf/lo/disable_ipv6"} {
			fmt.Fprintf(&s, "pod %s=%s; ", k, run(pod.NS.Path(), "cat", "/proc/sys/net/"+k))
		}
		fmt.Fprintf(&s, "host accept_ra=%s; ", run(node.NS.Path(), "cat", "/proc/sys/net/ipv6/conf/"+hostVeth+"/accept_ra"))
		fmt.Fprintf(&s, "ip_forward=%s; ", run(node.NS.Path(), "cat", "/proc/sys/net/ipv4/ip_forward"))
		var port []struct {
			Master   string `json:"master"`
			State    string `json:"state"`
			Hairpin  bool   `json:"hairpin"`
			MTU      int    `json:"mtu"`
			Isolated bool   `json:"isolated"`
		}
		if err := json.Unmarshal([]byte(run(node.NS.Path(), "bridge", "-d", "-j", "link", "show", "dev", hostVeth)), &port); err != nil || len(port) != 1 {
			t.Fatalf("bridge link show dev %s: %v %v", hostVeth, port, err)
		}
		fmt.Fprintf(&s, "port %+v; ", port[0])
		for _, l := range []struct{ ns, dev string }{{node.NS.Path(), hostVeth}, {pod.NS.Path(), pod.IfName}} {
			var link []struct {
				TxQLen int      `json:"txqlen"`
				Flags  []string `json:"flags"`
			}
			if err := json.Unmarshal([]byte(run(l.ns, "ip", "-j", "link", "show", "dev", l.dev)), &link); err != nil || len(link) != 1 {
				t.Fatalf("ip link show dev %s: %v %v", l.dev, link, err)
			}
			fmt.Fprintf(&s, "%s qlen %d flags %v; ", l.dev[:min(len(l.dev), 4)], link[0].TxQLen, link[0].Flags)
		}
		v := viewPod(t, pod)
		fmt.Fprintf(&s, "pod mtu %d addrs %d; ", v.mtu, len(v.addrs))
		for _, r := range v.routes {
			fmt.Fprintf(&s, "route %s gw %s; ", r.Dst, r.Gw)
		}
		return added{pod, b.String(), s.String()}
	}
	bin, own := add(true), add(false)
	data, err := os.ReadFile(timings)
	if err != nil {
		t.Fatal(err)
	}
	var steps []string
	for _, line := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		var tm weftcni.Timing
		if err := json.Unmarshal([]byte(line), &tm); err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, st := range tm.Steps {
			names = append(names, st.Step)
		}
		steps = append(steps, tm.ContainerID[:4]+": "+strings.Join(names, ","))
	}
	if len(steps) != 2 || !strings.Contains(steps[0], "delegate bridge") || strings.Contains(steps[0], "veth") ||
		!strings.Contains(steps[1], ",veth,host-local,") || strings.Contains(steps[1], "delegate bridge") {
		t.Errorf("ADD steps %q: want the bridge binary's, then the plugin's own", steps)
	}
	if bin.res != own.res {
		t.Errorf("ADD results differ:\nbridge plugin: %s\nin process:    %s", bin.res, own.res)
	}
	if bin.state != own.state {
		t.Errorf("pod state differs:\nbridge plugin: %s\nin process:    %s", bin.state, own.state)
	}
	t.Logf("both: %s\n%s", own.res, own.state)
	for _, a := range []added{bin, own} {
		if err := node.Check(ctx, a.pod); err != nil {
			t.Errorf("CHECK of %s: %v", a.pod.ID, err)
		}
		if err := node.Del(ctx, a.pod); err != nil {
			t.Errorf("DEL of %s: %v", a.pod.ID, err)
		}
	}
	wantNodeClean(t, node)
}
