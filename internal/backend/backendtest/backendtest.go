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
// the test created, so it collides with nothing).
var Underlay = netip.MustParsePrefix("192.0.2.0/24")

// Node is one node namespace with its underlay "eth0" and one pod.
type Node struct {
	NS     *nstest.NS
	Pod    *nstest.NS
	Ext    netif.External
	Subnet netip.Prefix // the node's lease
	PodIP  netip.Addr   // <subnet>.2, behind gateway <subnet>.1 on the node
}

// Params returns backend.Params for this node.
func (n *Node) Params(nw *config.Network) backend.Params {
	return backend.Params{Network: nw, Ext: n.Ext}
}

// Lease returns the node's lease with the given backend attributes.
func (n *Node) Lease(typ string, data []byte) lease.Lease {
	return lease.Lease{Subnet: n.Subnet, Attrs: lease.Attrs{PublicIP: n.Ext.PublicIP, BackendType: typ, BackendData: data}}
}

// Cluster builds one node per subnet. Node i has underlay address
// 192.0.2.(i+1)/24 on "eth0"; the nodes' eth0s are joined by veth pairs
// into a bridge in a separate "switch" namespace when there are more than
// two, directly otherwise.
func Cluster(t testing.TB, subnets ...netip.Prefix) []*Node {
	t.Helper()
	nodes := make([]*Node, len(subnets))
	for i, sn := range subnets {
		nodes[i] = &Node{NS: nstest.New(t), Subnet: sn}
		nodes[i].NS.Sysctl(t, "net/ipv4/ip_forward", "1")
	}
	addr := func(i int) netip.Prefix {
		return netip.PrefixFrom(netip.AddrFrom4([4]byte{192, 0, 2, byte(i + 1)}), Underlay.Bits())
	}
	switch len(nodes) {
	case 1:
		// A lone node still needs an underlay to put VXLAN on: give it a peer.
		nstest.Veth(t, nodes[0].NS, "eth0", addr(0), nstest.New(t), "eth0", addr(1))
	case 2:
		nstest.Veth(t, nodes[0].NS, "eth0", addr(0), nodes[1].NS, "eth0", addr(1))
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
			if err := sw.H.LinkSetMaster(port, br); err != nil {
				t.Fatal(err)
			}
		}
	}
	for i, n := range nodes {
		eth0 := n.NS.Link(t, "eth0")
		n.Ext = netif.External{
			Name: "eth0", Index: eth0.Attrs().Index, MTU: eth0.Attrs().MTU,
			Addr: addr(i).Addr(), PublicIP: addr(i).Addr(), Subnet: Underlay,
		}
		n.Pod = nstest.New(t)
		gw := netip.PrefixFrom(lease.FirstIP(n.Subnet), n.Subnet.Bits())
		n.PodIP = gw.Addr().Next()
		nstest.Veth(t, n.NS, "vpod", gw, n.Pod, "eth0", netip.PrefixFrom(n.PodIP, n.Subnet.Bits()))
		podEth := n.Pod.Link(t, "eth0")
		def := netlinkx.Route{Dst: netip.MustParsePrefix("0.0.0.0/0"), Gw: gw.Addr(), LinkIndex: podEth.Attrs().Index}
		if err := n.Pod.H.RouteReplace(def); err != nil {
			t.Fatal(err)
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
