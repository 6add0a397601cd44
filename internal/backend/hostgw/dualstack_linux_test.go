package hostgw_test

import (
	"context"
	"net/netip"
	"slices"
	"testing"

	"github.com/weft-net/weft/internal/backend/backendtest"
	"github.com/weft-net/weft/internal/backend/hostgw"
	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/netlinkx"
)

// TestDualStackThreeNodes: each node routes every other node's subnets of
// both families via its public addresses; pods ping over each family; an
// IPv6 peer off the segment is refused while its IPv4 half is routed; a
// deleted IPv6 route comes back on a full reconcile, and Update adds and
// removes both families' routes.
func TestDualStackThreeNodes(t *testing.T) {
	nodes := backendtest.DualCluster(t,
		[]netip.Prefix{pfx("10.244.1.0/24"), pfx("10.244.2.0/24"), pfx("10.244.3.0/24")},
		[]netip.Prefix{pfx("fd00:10:244:1::/64"), pfx("fd00:10:244:2::/64"), pfx("fd00:10:244:3::/64")})
	nw := backendtest.Network(t, `{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"host-gw"}}`)
	ctx := context.Background()
	var bs []*hostgw.Backend
	var leases []lease.Lease
	for _, n := range nodes {
		b, err := hostgw.New(n.Params(nw), n.NS.H, backendtest.Logger(t))
		if err != nil {
			t.Fatal(err)
		}
		typ, data, err := b.LeaseAttrs(ctx)
		if err != nil {
			t.Fatal(err)
		}
		own := n.Lease(typ, data)
		if _, err := b.Configure(ctx, own); err != nil {
			t.Fatal(err)
		}
		bs = append(bs, b)
		leases = append(leases, own)
	}
	// Dual stack, but its IPv6 address is off the segment.
	farV6 := netip.MustParseAddr("2001:db8:ff::9")
	far := lease.Lease{Subnet: pfx("10.244.9.0/24"), IPv6Subnet: pfx("fd00:10:244:9::/64"),
		Attrs: lease.Attrs{PublicIP: netip.MustParseAddr("192.0.2.9"), PublicIPv6: &farV6, BackendType: "host-gw"}}
	all := append(slices.Clone(leases), far)
	for i, b := range bs {
		if err := b.Reconcile(ctx, leases[i], all, true); err != nil {
			t.Fatalf("node %d: %v", i, err)
		}
		if b.Refused() != 1 {
			t.Errorf("node %d: Refused() = %d, want 1", i, b.Refused())
		}
	}
	a := nodes[0]
	v6 := backendtest.Routes6(t, a.NS.H, a.Ext.Index)
	for _, o := range nodes[1:] {
		if !slices.Contains(v6, netlinkx.Route{Dst: o.Subnet6, Gw: o.Ext.PublicIPv6, LinkIndex: a.Ext.Index}) {
			t.Errorf("no route %s via %s: %v", o.Subnet6, o.Ext.PublicIPv6, v6)
		}
	}
	if slices.ContainsFunc(v6, func(r netlinkx.Route) bool { return r.Dst == far.IPv6Subnet }) {
		t.Errorf("route to the off-segment IPv6 peer: %v", v6)
	}
	if !slices.ContainsFunc(backendtest.Routes(t, a.NS.H, a.Ext.Index), func(r netlinkx.Route) bool { return r.Dst == far.Subnet }) {
		t.Errorf("the off-segment IPv6 peer's IPv4 half is not routed")
	}
	pingAll := func() {
		t.Helper()
		for _, x := range nodes {
			for _, y := range nodes {
				if x == y {
					continue
				}
				if err := x.Pod.Ping(x.PodIP, y.PodIP); err != nil {
					t.Fatalf("%s -> %s: %v", x.PodIP, y.PodIP, err)
				}
				if err := x.Pod.Ping(x.PodIP6, y.PodIP6); err != nil {
					t.Fatalf("%s -> %s: %v", x.PodIP6, y.PodIP6, err)
				}
			}
		}
	}
	pingAll()

	// A deleted IPv6 route comes back on the next full reconcile.
	b1 := nodes[1]
	if err := a.NS.H.RouteDel(netlinkx.Route{Dst: b1.Subnet6, Gw: b1.Ext.PublicIPv6, LinkIndex: a.Ext.Index}); err != nil {
		t.Fatal(err)
	}
	if err := bs[0].Reconcile(ctx, leases[0], all, true); err != nil {
		t.Fatal(err)
	}
	pingAll()

	// Update: node 2 goes and comes back, both families at once.
	if err := bs[0].Update(ctx, leases[0], []lease.Event{{Type: lease.Removed, Lease: leases[2]}}); err != nil {
		t.Fatal(err)
	}
	for _, r := range append(backendtest.Routes(t, a.NS.H, a.Ext.Index), backendtest.Routes6(t, a.NS.H, a.Ext.Index)...) {
		if r.Dst == leases[2].Subnet || r.Dst == leases[2].IPv6Subnet {
			t.Fatalf("route %v left after node 2's lease went", r)
		}
	}
	if err := bs[0].Update(ctx, leases[0], []lease.Event{{Type: lease.Added, Lease: leases[2]}}); err != nil {
		t.Fatal(err)
	}
	pingAll()
}

// TestIPv6Only: no IPv4 network, IPv6 routes only.
func TestIPv6Only(t *testing.T) {
	nodes := backendtest.DualCluster(t, nil, []netip.Prefix{pfx("fd00:10:244:1::/64"), pfx("fd00:10:244:2::/64")})
	nw := backendtest.Network(t, `{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"host-gw"}}`)
	ctx := context.Background()
	var bs []*hostgw.Backend
	var leases []lease.Lease
	for _, n := range nodes {
		b, err := hostgw.New(n.Params(nw), n.NS.H, backendtest.Logger(t))
		if err != nil {
			t.Fatal(err)
		}
		bs = append(bs, b)
		leases = append(leases, n.Lease("host-gw", nil))
	}
	for i, b := range bs {
		if _, err := b.Configure(ctx, leases[i]); err != nil {
			t.Fatal(err)
		}
		if err := b.Reconcile(ctx, leases[i], leases, true); err != nil {
			t.Fatal(err)
		}
	}
	if err := nodes[0].Pod.Ping(nodes[0].PodIP6, nodes[1].PodIP6); err != nil {
		t.Fatal(err)
	}
	if rs := backendtest.Routes(t, nodes[0].NS.H, nodes[0].Ext.Index); len(rs) != 0 {
		t.Errorf("IPv4 routes in an IPv6-only network: %v", rs)
	}
}
