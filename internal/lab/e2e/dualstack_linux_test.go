package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/weft-net/weft/internal/lab"
	"github.com/weft-net/weft/internal/lab/labtest"
	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/netlinkx"
)

// TestDualStackVXLANScenarios: a three-node dual-stack vxlan lab (every
// mesh check pings over IPv4 and over IPv6), an IPv6 TCP stream across
// nodes, and the healing scenarios with IPv6 in them: restart (pings of
// both families keep flowing), flannel-v6.1 and its IPv6 routes,
// neighbours and FDB entries deleted (repaired from events, as for IPv4),
// a deleted lease (both subnets kept).
func TestDualStackVXLANScenarios(t *testing.T) {
	labtest.RequireRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	e := upLab(t, ctx, lab.Options{
		Nodes: 3, PodsPerNode: 1, Backend: "vxlan", IPFamily: lab.IPFamilyDual,
		WeftdArgs: []string{"--resync-period=" + resync.String()},
	})
	e.converged(ctx, 10*time.Second)
	e.mesh(ctx)

	runScenarios(t, ctx, e, e, []scenario[*env]{
		{"IPv6Stream", testStream6},
		{"DualLease", testDualLease},
		{"RestartKeepsSubnetsAndTraffic", testRestart},
		{"DeletedFlannelV6AndIPv6PartsHeal", testHeal6},
		{"DeletedDeviceAndRouteHeal", testHeal},
		{"DeletedLease", testDeletedLease},
	})
}

// TestDualStackHostGW: a three-node dual-stack host-gw lab: routes of both
// families via the peers' public addresses, full mesh over each, an IPv6
// stream; a restart loses no ping of either family, a deleted IPv6 route
// comes back within a resync, and a deleted lease takes both of its routes
// off the other nodes.
func TestDualStackHostGW(t *testing.T) {
	labtest.RequireRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	e := upLab(t, ctx, lab.Options{
		Nodes: 3, PodsPerNode: 1, Backend: "host-gw", IPFamily: lab.IPFamilyDual,
		WeftdArgs: []string{"--resync-period=" + resync.String()},
	})
	hostGWConverged := func(within time.Duration) {
		t.Helper()
		for _, n := range e.l.Nodes {
			if _, err := waitFor(ctx, within, func() error { return e.hostGWErr(n.Index, true) }); err != nil {
				t.Fatal(err)
			}
		}
	}
	hostGWConverged(10 * time.Second)
	e.mesh(ctx)

	runScenarios(t, ctx, e, e, []scenario[*env]{
		{"Doctor", testDoctorHostGW},
		{"IPv6Stream", testStream6},
		{"RestartKeepsSubnetsAndTraffic", testRestart},
		{"DeletedIPv6RouteHeals", func(t *testing.T, ctx context.Context, e *env) {
			const i = 1
			o := e.l.Node(2)
			dst := o.Subnet6.Masked().String()
			if _, err := e.l.Exec(ctx, e.l.Node(i).NS, "ip", "-6", "route", "del", dst); err != nil {
				t.Fatal(err)
			}
			took, err := waitFor(ctx, resync+slack, func() error { return e.hostGWErr(i, true) })
			if err != nil {
				t.Fatalf("IPv6 route to %s not back: %v", dst, err)
			}
			t.Logf("IPv6 route to %s deleted: back in %s", dst, took.Round(time.Millisecond))
		}},
		{"DeletedLease", func(t *testing.T, ctx context.Context, e *env) {
			const i = 3
			key := e.leaseKey(i)
			n := e.l.Node(i)
			if err := e.l.StopAgent(ctx, i); err != nil {
				t.Fatal(err)
			}
			e.del(ctx, key)
			for _, o := range []int{1, 2} {
				took, err := waitFor(ctx, resync+slack, func() error {
					rs, err := e.h[o].RouteList(netlinkx.RouteFilter{})
					if err != nil {
						return err
					}
					for _, r := range rs {
						if r.Dst == n.Subnet.Masked() || r.Dst == n.Subnet6.Masked() {
							return fmt.Errorf("node %d still routes %s", o, r.Dst)
						}
					}
					return nil
				})
				if err != nil {
					t.Fatalf("lease %s deleted: %v", key, err)
				}
				t.Logf("lease deleted: node %d dropped both routes to node %d in %s", o, i, took.Round(time.Millisecond))
			}
			if err := e.l.StartAgent(ctx, i); err != nil {
				t.Fatal(err)
			}
			if err := e.l.WaitReady(ctx); err != nil {
				t.Fatal(err)
			}
			hostGWConverged(resync + slack)
		}},
	})
}

// hostGWErr says which route of node i's host-gw datapath is missing:
// each other node's subnet via its public address, on eth0, per family
// (IPv6 only when v6).
func (e *env) hostGWErr(i int, v6 bool) error {
	h := e.h[i]
	eth0, err := h.LinkByName("eth0")
	if err != nil {
		return err
	}
	rs, err := h.RouteList(netlinkx.RouteFilter{LinkIndex: eth0.Attrs().Index})
	if err != nil {
		return err
	}
	for _, o := range e.l.Nodes {
		if o.Index == i {
			continue
		}
		want := []netlinkx.Route{{Dst: o.Subnet.Masked(), Gw: o.PublicIP, LinkIndex: eth0.Attrs().Index}}
		if v6 {
			want = append(want, netlinkx.Route{Dst: o.Subnet6.Masked(), Gw: o.PublicIPv6, LinkIndex: eth0.Attrs().Index})
		}
		for _, r := range want {
			if !contains(rs, r) {
				return fmt.Errorf("node %d: no route %s", i, r)
			}
		}
	}
	return nil
}

// testStream6: one IPv6 TCP stream from node 1's pod to node 2's pod.
func testStream6(t *testing.T, ctx context.Context, e *env) {
	from, to := e.l.Node(1).Pods[0], e.l.Node(2).Pods[0]
	r, err := lab.Iperf(ctx, from.NS, to.NS, to.IP6, 2*time.Second, 1)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("IPv6 TCP %s -> %s: %.2f Gbit/s, %d retransmits", from.IP6, to.IP6, r.Bps/1e9, r.Retransmits)
	if r.Bps <= 0 {
		t.Fatalf("IPv6 stream moved nothing: %+v", r)
	}
}

// testDualLease: each node's lease sits under flannel's dual key with its
// PublicIPv6 and flannel-v6.1's MAC as BackendV6Data; subnet.env has both
// families.
func testDualLease(t *testing.T, ctx context.Context, e *env) {
	for _, n := range e.l.Nodes {
		key := e.leaseKey(n.Index)
		a, ok, err := e.getLease(ctx, key)
		if err != nil || !ok {
			t.Fatalf("lease %s: %v %v", key, ok, err)
		}
		if a.PublicIPv6 == nil || *a.PublicIPv6 != n.PublicIPv6 {
			t.Errorf("lease %s: PublicIPv6 %v, want %s", key, a.PublicIPv6, n.PublicIPv6)
		}
		want := fmt.Sprintf(`{"VNI":1,"VtepMAC":"%s"}`, e.peer(n.Index).mac6)
		if string(a.BackendV6Data) != want {
			t.Errorf("lease %s: BackendV6Data %s, want %s", key, a.BackendV6Data, want)
		}
		if !n.Subnet6.IsValid() || !netip.MustParsePrefix(lab.DefaultIPv6Network).Contains(n.Subnet6.Addr()) || n.Subnet6.Bits() != 64 {
			t.Errorf("node %d: FLANNEL_IPV6_SUBNET %s", n.Index, n.Subnet6)
		}
	}
}

// testHeal6 is testHeal over IPv6: flannel-v6.1 deleted or set down, an
// IPv6 route, neighbour or FDB entry deleted, each repaired from the
// kernel's notification well within a resync, flannel-v6.1 with its MAC.
func testHeal6(t *testing.T, ctx context.Context, e *env) { healFamily(t, ctx, e, true) }

// TestKubeIPv6Only: an IPv6-only network (EnableIPv4 false) with the
// Kubernetes store, as flannel runs it: Nodes get IPv6 podCIDRs only,
// agents make flannel-v6.1 alone and publish backend-v6-data and
// public-ipv6; every pod reaches every pod over IPv6, and a stream
// crosses.
func TestKubeIPv6Only(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	e := upKubeLab(t, ctx, lab.Options{Nodes: 3, PodsPerNode: 1, Backend: "vxlan", IPFamily: lab.IPFamilyIPv6})
	e.converged(ctx, 10*time.Second)
	e.mesh(ctx)
	for _, n := range e.l.Nodes {
		if n.Subnet.IsValid() || len(n.Pods) == 0 || n.Pods[0].IP.IsValid() {
			t.Errorf("node %d: IPv4 subnet %s, pod IPv4 %v in an IPv6-only lab", n.Index, n.Subnet, n.Pods)
		}
		if _, err := e.h[n.Index].LinkByName(vxlanDevice); !netlinkx.IsNotFound(err) {
			t.Errorf("node %d: %s in an IPv6-only network (%v)", n.Index, vxlanDevice, err)
		}
		node, err := e.cs.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		ann := node.Annotations
		want6 := fmt.Sprintf(`{"VNI":1,"VtepMAC":"%s"}`, e.peer(n.Index).mac6)
		if ann[e.keys.BackendV6Data] != want6 || ann[e.keys.PublicIPv6] != n.PublicIPv6.String() {
			t.Errorf("node %d annotations: backend-v6-data %q public-ipv6 %q, want %s and %s",
				n.Index, ann[e.keys.BackendV6Data], ann[e.keys.PublicIPv6], want6, n.PublicIPv6)
		}
		if node.Spec.PodCIDR != n.Subnet6.Masked().String() {
			t.Errorf("node %d: podCIDR %q, subnet.env says %s", n.Index, node.Spec.PodCIDR, n.Subnet6)
		}
	}
	testStream6(t, ctx, e.env)
}

// TestKubeDualStack: dual-stack podCIDRs from the controller-manager, both
// families' annotations, the mesh over each family.
func TestKubeDualStack(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	e := upKubeLab(t, ctx, lab.Options{Nodes: 3, PodsPerNode: 1, Backend: "vxlan", IPFamily: lab.IPFamilyDual})
	e.converged(ctx, 10*time.Second)
	e.mesh(ctx)
	for _, n := range e.l.Nodes {
		node, err := e.cs.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		p := e.peer(n.Index)
		ann := node.Annotations
		if ann[e.keys.BackendData] != fmt.Sprintf(`{"VNI":1,"VtepMAC":"%s"}`, p.mac) ||
			ann[e.keys.BackendV6Data] != fmt.Sprintf(`{"VNI":1,"VtepMAC":"%s"}`, p.mac6) ||
			ann[e.keys.PublicIPv6] != n.PublicIPv6.String() {
			t.Errorf("node %d annotations: %v", n.Index, ann)
		}
	}
}

// testDoctorHostGW: weft doctor on node 1 finds every check ok and each
// peer's cni0 gateway answering over both families; with echoes to node
// 2's IPv4 gateway dropped in node 2 (as when it has no cni0 with that
// address), it names node 2 as not answering on its subnet, with what to
// check there.
func testDoctorHostGW(t *testing.T, ctx context.Context, e *env) {
	r, ok := e.doctor(t, ctx, 1)
	var peers []string
	for _, x := range r.Results {
		if x.Status != "ok" {
			t.Errorf("healthy: %s is %s: %s | %s", x.Check, x.Status, x.Message, x.Hint)
		}
		if x.Check == "peer" {
			peers = append(peers, x.Message)
		}
	}
	t.Logf("peers: %q", peers)
	for _, n := range []*lab.Node{e.l.Node(2), e.l.Node(3)} {
		for _, w := range []string{
			fmt.Sprintf("%s (%s): underlay ", n.PublicIP, n.Subnet.Masked()),
			fmt.Sprintf("%s (%s): underlay ", n.PublicIPv6, n.Subnet6.Masked()),
		} {
			if !slices.ContainsFunc(peers, func(p string) bool {
				return strings.HasPrefix(p, w) && strings.Contains(p, ", host-gw ") && strings.Contains(p, "-byte DF ")
			}) {
				t.Errorf("node %d: no %q…host-gw… among %q", n.Index, w, peers)
			}
		}
	}
	if !ok || !r.OK {
		t.Fatalf("healthy: doctor failed: %+v", r)
	}

	n2 := e.l.Node(2)
	gw := lease.FirstIP(n2.Subnet.Masked())
	for _, cmd := range []string{
		"add table inet e2edoctor",
		"add chain inet e2edoctor input { type filter hook input priority 0 ; }",
		fmt.Sprintf("add rule inet e2edoctor input ip daddr %s icmp type echo-request drop", gw),
	} {
		if out, err := e.l.Exec(ctx, n2.NS, "nft", cmd); err != nil {
			t.Fatalf("nft %s: %v\n%s", cmd, err, out)
		}
	}
	defer func() {
		if out, err := e.l.Exec(ctx, n2.NS, "nft", "delete table inet e2edoctor"); err != nil {
			t.Errorf("nft: %v\n%s", err, out)
		}
	}()
	r, ok = e.doctor(t, ctx, 1)
	w := fmt.Sprintf("peer's agent not answering on its subnet: gateway %s via %s (host-gw) did not answer", gw, n2.PublicIP)
	found := false
	for _, x := range r.Results {
		found = found || x.Check == "peer" && x.Status == "fail" && x.Message == w && strings.Contains(x.Hint, fmt.Sprintf("cni0 up with %s", gw))
	}
	if ok || !found {
		t.Errorf("echoes to node 2's gateway dropped: doctor exit 0 %v, want %q with its fix:\n%+v", ok, w, r)
	}
}
