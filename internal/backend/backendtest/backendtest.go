// Package backendtest builds, for backend tests that need the kernel, a
// small cluster in throwaway network namespaces: nodes joined by one L2
// segment, each with a pod behind it, as a CNI bridge setup would leave it.
package backendtest

import (
	"fmt"
	"log/slog"
	"net/netip"
	"testing"

	"github.com/weft-net/weft/internal/backend"
	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/netif"
	"github.com/weft-net/weft/internal/netlinkx"
	"github.com/weft-net/weft/internal/netlinkx/nstest"
)

// Underlay is the segment the nodes share (TEST-NET-1, inside namespaces
// the test created, so it collides with nothing); Underlay6 its IPv6
// prefix (the documentation prefix) in a dual-stack cluster.
var (
	Underlay  = netip.MustParsePrefix("192.0.2.0/24")
	Underlay6 = netip.MustParsePrefix("2001:db8::/64")
)

// Node is one node namespace with its underlay "eth0" and one pod.
type Node struct {
	NS      *nstest.NS
	Pod     *nstest.NS
	Ext     netif.External
	Subnet  netip.Prefix // the node's lease; invalid in an IPv6-only cluster
	PodIP   netip.Addr   // <subnet>.2, behind gateway <subnet>.1 on the node
	Subnet6 netip.Prefix // the node's IPv6 lease in a dual-stack or IPv6-only cluster
	PodIP6  netip.Addr   // <subnet6>::2, behind gateway <subnet6>::1
}

// Params returns backend.Params for this node.
func (n *Node) Params(nw *config.Network) backend.Params {
	return backend.Params{Network: nw, Ext: n.Ext}
}

// Lease returns the node's lease with the given backend attributes (both
// families' subnets and public addresses in a dual-stack cluster; the
// caller adds BackendV6Data).
func (n *Node) Lease(typ string, data []byte) lease.Lease {
	l := lease.Lease{Subnet: n.Subnet, IPv6Subnet: n.Subnet6, Attrs: lease.Attrs{PublicIP: n.Ext.PublicIP, BackendType: typ, BackendData: data}}
	if n.Subnet6.IsValid() {
		v6 := n.Ext.PublicIPv6
		l.Attrs.PublicIPv6 = &v6
	}
	return l
}

// Cluster builds one node per subnet. Node i has underlay address
// 192.0.2.(i+1)/24 on "eth0"; the nodes' eth0s are joined by veth pairs
// into a bridge in a separate "switch" namespace when there are more than
// two, directly otherwise.
func Cluster(t testing.TB, subnets ...netip.Prefix) []*Node {
	t.Helper()
	return DualCluster(t, subnets, nil)
}

// DualCluster is Cluster for IPv4 subnets v4 and IPv6 subnets v6 (node i
// gets v4[i] and v6[i]; either list may be empty for a single-family
// cluster, else both have one entry per node). With IPv6, node i's eth0
// also has 2001:db8::(i+1)/64 and its pod an IPv6 address and default
// route; duplicate address detection is off, so addresses work at once.
func DualCluster(t testing.TB, v4, v6 []netip.Prefix) []*Node {
	t.Helper()
	count := max(len(v4), len(v6))
	if len(v4) > 0 && len(v6) > 0 && len(v4) != len(v6) {
		t.Fatalf("DualCluster: %d IPv4 subnets but %d IPv6 subnets", len(v4), len(v6))
	}
	newNS := func() *nstest.NS {
		n := nstest.New(t)
		if len(v6) > 0 {
			n.Sysctl(t, "net/ipv6/conf/default/accept_dad", "0")
			n.Sysctl(t, "net/ipv6/conf/all/accept_dad", "0")
		}
		return n
	}
	nodes := make([]*Node, count)
	for i := range nodes {
		nodes[i] = &Node{NS: newNS()}
		if len(v4) > 0 {
			nodes[i].Subnet = v4[i]
		}
		if len(v6) > 0 {
			nodes[i].Subnet6 = v6[i]
			nodes[i].NS.Sysctl(t, "net/ipv6/conf/all/forwarding", "1")
		}
		nodes[i].NS.Sysctl(t, "net/ipv4/ip_forward", "1")
	}
	addr := func(i int) netip.Prefix {
		if len(v4) == 0 {
			return netip.Prefix{}
		}
		return netip.PrefixFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(i + 1)}), Underlay.Bits())
	}
	addr6 := func(i int) netip.Prefix {
		a := Underlay6.Addr().As16()
		a[15] = byte(i + 1)
		return netip.PrefixFrom(netip.AddrFrom16(a), Underlay6.Bits())
	}
	veth := func(a *nstest.NS, aName string, i int, b *nstest.NS, bName string, j int) netlinkx.Link {
		_, bl := nstest.Veth(t, a, aName, addr(i), b, bName, addr(j))
		if len(v6) > 0 {
			for _, e := range []struct {
				ns   *nstest.NS
				name string
				k    int
			}{{a, aName, i}, {b, bName, j}} {
				if err := e.ns.H.AddrReplace(e.ns.Link(t, e.name), addr6(e.k)); err != nil {
					t.Fatal(err)
				}
			}
		}
		return bl
	}
	switch len(nodes) {
	case 1:
		// A lone node still needs an underlay to put VXLAN on: give it a peer.
		veth(nodes[0].NS, "eth0", 0, newNS(), "eth0", 1)
	case 2:
		veth(nodes[0].NS, "eth0", 0, nodes[1].NS, "eth0", 1)
	default:
		sw := nstest.New(t)
		la := netlinkx.NewLinkAttrs()
		la.Name = "br0"
		if err := sw.H.LinkAdd(&netlinkx.Bridge{LinkAttrs: la}); err != nil {
			t.Fatal(err)
		}
		br := sw.Link(t, "br0")
		if err := sw.H.LinkSetUp(br); err != nil {
			t.Fatal(err)
		}
		for i, n := range nodes {
			_, port := nstest.Veth(t, n.NS, "eth0", addr(i), sw, fmt.Sprintf("p%d", i), netip.Prefix{})
			if len(v6) > 0 {
				if err := n.NS.H.AddrReplace(n.NS.Link(t, "eth0"), addr6(i)); err != nil {
					t.Fatal(err)
				}
			}
			if err := sw.H.LinkSetMaster(port, br); err != nil {
				t.Fatal(err)
			}
		}
	}
	for i, n := range nodes {
		eth0 := n.NS.Link(t, "eth0")
		n.Ext = netif.External{Name: "eth0", Index: eth0.Attrs().Index, MTU: eth0.Attrs().MTU}
		if len(v4) > 0 {
			n.Ext.Addr, n.Ext.PublicIP, n.Ext.Subnet = addr(i).Addr(), addr(i).Addr(), Underlay
		}
		if len(v6) > 0 {
			n.Ext.Addr6, n.Ext.PublicIPv6, n.Ext.Subnet6 = addr6(i).Addr(), addr6(i).Addr(), Underlay6
		}
		n.Pod = newNS()
		var gw, gw6 netip.Prefix
		if n.Subnet.IsValid() {
			gw = netip.PrefixFrom(lease.FirstIP(n.Subnet), n.Subnet.Bits())
			n.PodIP = gw.Addr().Next()
		}
		var podAddr netip.Prefix
		if n.PodIP.IsValid() {
			podAddr = netip.PrefixFrom(n.PodIP, n.Subnet.Bits())
		}
		nstest.Veth(t, n.NS, "vpod", gw, n.Pod, "eth0", podAddr)
		podEth := n.Pod.Link(t, "eth0")
		if n.Subnet.IsValid() {
			def := netlinkx.Route{Dst: netip.MustParsePrefix("0.0.0.0/0"), Gw: gw.Addr(), LinkIndex: podEth.Attrs().Index}
			if err := n.Pod.H.RouteReplace(def); err != nil {
				t.Fatal(err)
			}
		}
		if n.Subnet6.IsValid() {
			gw6 = netip.PrefixFrom(lease.FirstIP(n.Subnet6), n.Subnet6.Bits())
			n.PodIP6 = gw6.Addr().Next()
			if err := n.NS.H.AddrReplace(n.NS.Link(t, "vpod"), gw6); err != nil {
				t.Fatal(err)
			}
			if err := n.Pod.H.AddrReplace(podEth, netip.PrefixFrom(n.PodIP6, n.Subnet6.Bits())); err != nil {
				t.Fatal(err)
			}
			def := netlinkx.Route{Dst: netip.MustParsePrefix("::/0"), Gw: gw6.Addr(), LinkIndex: podEth.Attrs().Index}
			if err := n.Pod.H.RouteReplace(def); err != nil {
				t.Fatal(err)
			}
		}
	}
	if len(v6) > 0 {
		for _, n := range nodes {
			n.NS.WaitIPv6Ready(t)
			n.Pod.WaitIPv6Ready(t)
		}
	}
	return nodes
}

// Logger logs to the test's output: everything for a test, warnings only
// for a benchmark (whose loop would otherwise drown its figures).
func Logger(t testing.TB) *slog.Logger {
	lvl := slog.LevelDebug
	if _, ok := t.(*testing.B); ok {
		lvl = slog.LevelWarn
	}
	return slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: lvl}))
}

// Network parses a network config or fails the test.
func Network(t testing.TB, js string) *config.Network {
	t.Helper()
	nw, _, err := config.Parse([]byte(js))
	if err != nil {
		t.Fatal(err)
	}
	return nw
}

// Routes lists the IPv4 main-table routes on a link.
func Routes(t testing.TB, h *netlinkx.Handle, link int) []netlinkx.Route {
	t.Helper()
	rs, err := h.RouteList(netlinkx.RouteFilter{Family: netlinkx.FamilyV4, LinkIndex: link})
	if err != nil {
		t.Fatal(err)
	}
	return rs
}

// Routes6 lists the IPv6 main-table routes on a link.
func Routes6(t testing.TB, h *netlinkx.Handle, link int) []netlinkx.Route {
	t.Helper()
	rs, err := h.RouteList(netlinkx.RouteFilter{Family: netlinkx.FamilyV6, LinkIndex: link})
	if err != nil {
		t.Fatal(err)
	}
	return rs
}
