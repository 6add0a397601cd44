package vxlan_test

import (
	"context"
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/weft-net/weft/internal/backend/backendtest"
	"github.com/weft-net/weft/internal/backend/vxlan"
	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/netlinkx"
)

const dualConf = `{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}`

func device6(t testing.TB, v *vnode) *netlinkx.Vxlan {
	t.Helper()
	l, err := v.NS.H.LinkByName(v.b.NameV6())
	if err != nil {
		t.Fatal(err)
	}
	return l.(*netlinkx.Vxlan)
}

func ping6(t *testing.T, from, to *vnode) {
	t.Helper()
	if err := from.Pod.Ping(from.PodIP6, to.PodIP6); err != nil {
		t.Fatalf("pod %s -> pod %s: %v", from.PodIP6, to.PodIP6, err)
	}
}

// entries6 is entries for flannel-v6.<VNI>.
func entries6(t *testing.T, v *vnode, sn netip.Prefix) (routes []netlinkx.Route, neighs []netlinkx.Neigh, fdb []netlinkx.FDB) {
	t.Helper()
	idx := device6(t, v).Index
	for _, r := range backendtest.Routes6(t, v.NS.H, idx) {
		if r.Dst == sn {
			routes = append(routes, r)
		}
	}
	nl, err := v.NS.H.NeighList(idx, netlinkx.FamilyV6)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range nl {
		if n.IP == sn.Addr() {
			neighs = append(neighs, n)
		}
	}
	fs, err := v.NS.H.FDBList(idx)
	if err != nil {
		t.Fatal(err)
	}
	return routes, neighs, fs
}

func sysctl(t *testing.T, v *vnode, key string) string {
	t.Helper()
	var b []byte
	if err := v.NS.NetNS.Do(func(ns.NetNS) error {
		var err error
		b, err = os.ReadFile("/proc/sys/" + key)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func dualNodes(t *testing.T, n int) []*backendtest.Node {
	v4 := []netip.Prefix{pfx("10.244.1.0/24"), pfx("10.244.2.0/24"), pfx("10.244.3.0/24")}[:n]
	v6 := []netip.Prefix{pfx("fd00:10:244:1::/64"), pfx("fd00:10:244:2::/64"), pfx("fd00:10:244:3::/64")}[:n]
	return backendtest.DualCluster(t, v4, v6)
}

// TestDualStack: flannel.1 and flannel-v6.1 side by side, as flannel makes
// them, and pods reach each other over both families; the IPv6 half heals
// like the IPv4 one.
func TestDualStack(t *testing.T) {
	vs := start(t, dualConf, dualNodes(t, 2))
	a, b := vs[0], vs[1]
	reconcileAll(t, vs, true)

	dev := device6(t, a)
	if dev.Name != "flannel-v6.1" || dev.VxlanId != 1 || dev.Port != 8472 || dev.Learning || dev.MTU != a.Ext.MTU-70 ||
		dev.VtepDevIndex != a.Ext.Index || dev.SrcAddr.String() != a.Ext.Addr6.String() {
		t.Errorf("flannel-v6.1: %+v", dev)
	}
	if a.b.MACV6() == a.b.MAC() || a.b.MACV6().IsZero() {
		t.Errorf("flannel-v6.1 MAC %s, flannel.1 MAC %s: want a MAC of its own", a.b.MACV6(), a.b.MAC())
	}
	if got := sysctl(t, a, "net/ipv6/conf/flannel-v6.1/accept_ra"); got != "0" {
		t.Errorf("accept_ra = %s, want 0", got)
	}
	addrs, _ := a.NS.H.AddrList(dev, netlinkx.FamilyV6)
	addrs = slices.DeleteFunc(addrs, func(p netip.Prefix) bool { return p.Addr().IsLinkLocalUnicast() })
	if !slices.Equal(addrs, []netip.Prefix{pfx("fd00:10:244:1::/128")}) {
		t.Errorf("flannel-v6.1 addresses %v, want [fd00:10:244:1::/128]", addrs)
	}
	routes, neighs, fdb := entries6(t, a, b.Subnet6)
	bmac := b.b.MACV6()
	wantR := netlinkx.Route{Dst: b.Subnet6, Gw: b.Subnet6.Addr(), LinkIndex: dev.Index, OnLink: true}
	if !slices.Equal(routes, []netlinkx.Route{wantR}) ||
		!slices.Equal(neighs, []netlinkx.Neigh{{LinkIndex: dev.Index, IP: b.Subnet6.Addr(), MAC: bmac, State: netlinkx.NUDPermanent}}) ||
		!slices.Equal(fdb, []netlinkx.FDB{{LinkIndex: dev.Index, MAC: bmac, Dst: b.Ext.PublicIPv6}}) {
		t.Fatalf("node a holds IPv6 routes %v neighs %v fdb %v", routes, neighs, fdb)
	}
	for _, pair := range [][2]*vnode{{a, b}, {b, a}} {
		ping(t, pair[0], pair[1])
		ping6(t, pair[0], pair[1])
	}

	t.Run("restart keeps both MACs", func(t *testing.T) {
		again := start(t, dualConf, []*backendtest.Node{a.Node})[0]
		if again.b.MAC() != a.b.MAC() || again.b.MACV6() != a.b.MACV6() || device6(t, again).Index != dev.Index {
			t.Fatalf("restart: MACs %s %s (were %s %s)", again.b.MAC(), again.b.MACV6(), a.b.MAC(), a.b.MACV6())
		}
	})

	t.Run("deleted flannel-v6.1 comes back with its MAC", func(t *testing.T) {
		if err := a.NS.H.LinkDel(device6(t, a)); err != nil {
			t.Fatal(err)
		}
		// The watch's fast path cannot know: it asks for a full pass.
		if err := a.b.Reconcile(context.Background(), a.own, leasesOf(vs), true); err != nil {
			t.Fatal(err)
		}
		d := device6(t, a)
		if got, _ := netlinkx.MACFrom(d.HardwareAddr); d.Index == dev.Index || got != a.b.MACV6() {
			t.Fatalf("flannel-v6.1 #%d (was #%d) MAC %s, published %s", d.Index, dev.Index, got, a.b.MACV6())
		}
		if got := sysctl(t, a, "net/ipv6/conf/flannel-v6.1/accept_ra"); got != "0" {
			t.Errorf("recreated device accept_ra = %s, want 0", got)
		}
		ping6(t, a, b)
		ping(t, a, b)
	})

	t.Run("deleted IPv6 route and accept_ra are repaired", func(t *testing.T) {
		a.NS.Sysctl(t, "net/ipv6/conf/flannel-v6.1/accept_ra", "1")
		idx := device6(t, a).Index
		if err := a.NS.H.RouteDel(netlinkx.Route{Dst: b.Subnet6, Gw: b.Subnet6.Addr(), LinkIndex: idx, OnLink: true}); err != nil {
			t.Fatal(err)
		}
		if err := a.b.Reconcile(context.Background(), a.own, leasesOf(vs), true); err != nil {
			t.Fatal(err)
		}
		if r, _, _ := entries6(t, a, b.Subnet6); len(r) != 1 {
			t.Fatalf("routes to %s: %v", b.Subnet6, r)
		}
		if got := sysctl(t, a, "net/ipv6/conf/flannel-v6.1/accept_ra"); got != "0" {
			t.Errorf("accept_ra = %s after a full reconcile, want 0", got)
		}
		// The kernel's prefix route of the /128 stays.
		if !slices.ContainsFunc(backendtest.Routes6(t, a.NS.H, idx), func(r netlinkx.Route) bool { return r.Dst == pfx("fd00:10:244:1::/128") }) {
			t.Errorf("the device's own /128 route was removed: %v", backendtest.Routes6(t, a.NS.H, idx))
		}
		ping6(t, a, b)
	})

	t.Run("lease removed and back, by Update", func(t *testing.T) {
		dumps := a.NS.H.Dumps()
		if err := a.b.Update(context.Background(), a.own, []lease.Event{{Type: lease.Removed, Lease: b.own}}); err != nil {
			t.Fatal(err)
		}
		if n := a.NS.H.Dumps() - dumps; n != 0 {
			t.Errorf("Update dumped kernel tables %d times", n)
		}
		if r, n, f := entries6(t, a, b.Subnet6); len(r)+len(n)+len(f) != 0 {
			t.Fatalf("lease gone but flannel-v6.1 holds routes %v neighs %v fdb %v", r, n, f)
		}
		if r, n, f := entries(t, a, b.Subnet); len(r)+len(n)+len(f) != 0 {
			t.Fatalf("lease gone but flannel.1 holds routes %v neighs %v fdb %v", r, n, f)
		}
		dumps = a.NS.H.Dumps()
		if err := a.b.Update(context.Background(), a.own, []lease.Event{{Type: lease.Added, Lease: b.own}}); err != nil {
			t.Fatal(err)
		}
		if n := a.NS.H.Dumps() - dumps; n != 0 {
			t.Errorf("Update dumped kernel tables %d times", n)
		}
		ping6(t, a, b)
		ping(t, a, b)
	})
}

// TestDualStackThreeNodesDirectRouting: with DirectRouting every peer on the
// segment gets a plain route over eth0 for each family, and a peer whose
// IPv6 half is incomplete keeps its IPv4 routes.
func TestDualStackThreeNodesDirectRouting(t *testing.T) {
	vs := start(t, `{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan","DirectRouting":true}}`, dualNodes(t, 3))
	reconcileAll(t, vs, true)
	a := vs[0]
	for _, o := range vs[1:] {
		if !slices.Contains(backendtest.Routes6(t, a.NS.H, a.Ext.Index), netlinkx.Route{Dst: o.Subnet6, Gw: o.Ext.PublicIPv6, LinkIndex: a.Ext.Index}) {
			t.Errorf("no direct IPv6 route to %s via %s: %v", o.Subnet6, o.Ext.PublicIPv6, backendtest.Routes6(t, a.NS.H, a.Ext.Index))
		}
	}
	for _, x := range vs {
		for _, y := range vs {
			if x != y {
				ping(t, x, y)
				ping6(t, x, y)
			}
		}
	}
	// vs[2] loses its BackendV6Data (as from a node that predates it): its
	// IPv6 half is left out, its IPv4 half stays.
	c := vs[2]
	broken := c.own
	broken.Attrs.BackendV6Data = nil
	if err := a.b.Update(context.Background(), a.own, []lease.Event{{Type: lease.Added, Lease: broken}}); err != nil {
		t.Fatal(err)
	}
	if slices.ContainsFunc(backendtest.Routes6(t, a.NS.H, a.Ext.Index), func(r netlinkx.Route) bool { return r.Dst == c.Subnet6 }) {
		t.Errorf("IPv6 route to %s kept without BackendV6Data", c.Subnet6)
	}
	ping(t, a, c)
}

// TestIPv6Only: EnableIPv4 false makes flannel-v6.1 alone; BackendData is
// left out of the lease, as flannel does.
func TestIPv6Only(t *testing.T) {
	nodes := backendtest.DualCluster(t, nil, []netip.Prefix{pfx("fd00:10:244:1::/64"), pfx("fd00:10:244:2::/64")})
	vs := start(t, `{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"vxlan"}}`, nodes)
	reconcileAll(t, vs, true)
	if _, err := vs[0].NS.H.LinkByName("flannel.1"); !netlinkx.IsNotFound(err) {
		t.Errorf("flannel.1 in an IPv6-only network: %v", err)
	}
	if vs[0].b.Name() != "" || vs[0].b.NameV6() != "flannel-v6.1" {
		t.Errorf("names %q %q", vs[0].b.Name(), vs[0].b.NameV6())
	}
	ping6(t, vs[0], vs[1])
	ping6(t, vs[1], vs[0])
}

// TestRestoredVtepMACv6: the VtepMAC published in backend-v6-data goes to a
// new flannel-v6.1, as backend-data's goes to flannel.1.
func TestRestoredVtepMACv6(t *testing.T) {
	nodes := dualNodes(t, 1)
	nw := backendtest.Network(t, dualConf)
	p := nodes[0].Params(nw)
	p.VtepMAC, _ = net.ParseMAC("0e:11:22:33:44:55")
	p.VtepMACv6, _ = net.ParseMAC("0e:11:22:33:44:66")
	b, err := vxlan.New(p, nodes[0].NS.H, backendtest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	_, data, err := b.LeaseAttrs(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if string(data) != `{"VNI":1,"VtepMAC":"0e:11:22:33:44:55"}` || string(b.LeaseV6Data()) != `{"VNI":1,"VtepMAC":"0e:11:22:33:44:66"}` {
		t.Errorf("published %s and %s", data, b.LeaseV6Data())
	}
	l, err := nodes[0].NS.H.LinkByName("flannel-v6.1")
	if err != nil {
		t.Fatal(err)
	}
	if got := l.Attrs().HardwareAddr.String(); got != "0e:11:22:33:44:66" {
		t.Errorf("flannel-v6.1 MAC %s, want the restored 0e:11:22:33:44:66", got)
	}
}
