package vxlan_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/backend/backendtest"
	"github.com/weft-net/weft/internal/backend/vxlan"
	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/netlinkx"
)

var pfx = netip.MustParsePrefix

type vnode struct {
	*backendtest.Node
	b   *vxlan.Backend
	own lease.Lease
}

// start runs the agent's sequence on each node: LeaseAttrs, Configure.
func start(t *testing.T, netconf string, nodes []*backendtest.Node) []*vnode {
	t.Helper()
	nw := backendtest.Network(t, netconf)
	var out []*vnode
	for _, n := range nodes {
		b, err := vxlan.New(n.Params(nw), n.NS.H, backendtest.Logger(t))
		if err != nil {
			t.Fatal(err)
		}
		typ, data, err := b.LeaseAttrs(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		want := fmt.Sprintf(`{"VNI":%d,"VtepMAC":"%s"}`, nw.Backend.VNI, b.MAC())
		if !nw.EnableIPv4 {
			want = "" // flannel publishes no BackendData without IPv4
		}
		if typ != "vxlan" || string(data) != want {
			t.Fatalf("LeaseAttrs = %q %s, want vxlan %s", typ, data, want)
		}
		v := &vnode{Node: n, b: b, own: n.Lease(typ, data)}
		v6data := b.LeaseV6Data()
		if want6 := fmt.Sprintf(`{"VNI":%d,"VtepMAC":"%s"}`, nw.Backend.VNI, b.MACV6()); nw.EnableIPv6 && string(v6data) != want6 || !nw.EnableIPv6 && v6data != nil {
			t.Fatalf("LeaseV6Data = %s, want %s", v6data, want6)
		}
		v.own.Attrs.BackendV6Data = v6data
		pod, err := b.Configure(context.Background(), v.own)
		if err != nil {
			t.Fatal(err)
		}
		if want := n.Ext.MTU - 50; nw.Backend.MTU == 0 && pod.MTU != want {
			t.Fatalf("MTU %d, want %d", pod.MTU, want)
		}
		if pod.GSOIPv4MaxSize != 0 {
			t.Fatalf("pods get gso_ipv4_max_size %d; BIG TCP does not cross the tunnel", pod.GSOIPv4MaxSize)
		}
		out = append(out, v)
	}
	return out
}

func leasesOf(vs []*vnode) []lease.Lease {
	var ls []lease.Lease
	for _, v := range vs {
		ls = append(ls, v.own)
	}
	return ls
}

func reconcileAll(t *testing.T, vs []*vnode, full bool) {
	t.Helper()
	for _, v := range vs {
		if err := v.b.Reconcile(context.Background(), v.own, leasesOf(vs), full); err != nil {
			t.Fatal(err)
		}
	}
}

func ping(t *testing.T, from, to *vnode) {
	t.Helper()
	if err := from.Pod.Ping(from.PodIP, to.PodIP); err != nil {
		t.Fatalf("pod %s -> pod %s: %v", from.PodIP, to.PodIP, err)
	}
}

func device(t testing.TB, v *vnode) *netlinkx.Vxlan {
	t.Helper()
	l, err := v.NS.H.LinkByName(v.b.Name())
	if err != nil {
		t.Fatal(err)
	}
	return l.(*netlinkx.Vxlan)
}

// entries returns what the kernel holds on flannel.N for the given subnet.
func entries(t *testing.T, v *vnode, sn netip.Prefix) (routes []netlinkx.Route, neighs []netlinkx.Neigh, fdb []netlinkx.FDB) {
	t.Helper()
	idx := device(t, v).Index
	for _, r := range backendtest.Routes(t, v.NS.H, idx) {
		if r.Dst == sn {
			routes = append(routes, r)
		}
	}
	ns, err := v.NS.H.NeighList(idx, netlinkx.FamilyV4)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range ns {
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

func TestTwoNodes(t *testing.T) {
	nodes := backendtest.Cluster(t, pfx("10.244.1.0/24"), pfx("10.244.2.0/24"))
	vs := start(t, `{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}`, nodes)
	a, b := vs[0], vs[1]
	reconcileAll(t, vs, true)

	// Device as flannel makes it.
	dev := device(t, a)
	if dev.VxlanId != 1 || dev.Port != 8472 || dev.Learning || dev.MTU != a.Ext.MTU-50 ||
		dev.VtepDevIndex != a.Ext.Index || dev.SrcAddr.String() != a.Ext.Addr.String() {
		t.Errorf("device: %+v", dev)
	}
	if addrs, _ := a.NS.H.AddrList(dev, netlinkx.FamilyV4); !slices.Equal(addrs, []netip.Prefix{pfx("10.244.1.0/32")}) {
		t.Errorf("device addresses %v, want [10.244.1.0/32]", addrs)
	}
	routes, neighs, fdb := entries(t, a, b.Subnet)
	bmac := b.b.MAC()
	wantR := netlinkx.Route{Dst: b.Subnet, Gw: b.Subnet.Addr(), LinkIndex: dev.Index, OnLink: true}
	if !slices.Equal(routes, []netlinkx.Route{wantR}) ||
		!slices.Equal(neighs, []netlinkx.Neigh{{LinkIndex: dev.Index, IP: b.Subnet.Addr(), MAC: bmac, State: netlinkx.NUDPermanent}}) ||
		!slices.Equal(fdb, []netlinkx.FDB{{LinkIndex: dev.Index, MAC: bmac, Dst: b.Ext.PublicIP}}) {
		t.Fatalf("node a holds routes %v neighs %v fdb %v", routes, neighs, fdb)
	}
	ping(t, a, b)
	ping(t, b, a)

	t.Run("restart keeps the MAC", func(t *testing.T) {
		again := start(t, `{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}`, nodes[:1])[0]
		if again.b.MAC() != a.b.MAC() || device(t, again).Index != dev.Index {
			t.Fatalf("restart: MAC %s (was %s), ifindex %d (was %d)", again.b.MAC(), a.b.MAC(), device(t, again).Index, dev.Index)
		}
		if err := again.b.Reconcile(context.Background(), again.own, leasesOf(vs), true); err != nil {
			t.Fatal(err)
		}
		ping(t, a, b)
	})

	t.Run("deleted device comes back with its MAC", func(t *testing.T) {
		if err := a.NS.H.LinkDel(device(t, a)); err != nil {
			t.Fatal(err)
		}
		if err := a.b.Reconcile(context.Background(), a.own, leasesOf(vs), true); err != nil {
			t.Fatal(err)
		}
		d := device(t, a)
		if d.Index == dev.Index {
			t.Fatalf("device was not recreated")
		}
		if got, _ := netlinkx.MACFrom(d.HardwareAddr); got != a.b.MAC() {
			t.Fatalf("recreated with MAC %s, published %s", got, a.b.MAC())
		}
		ping(t, a, b)
		ping(t, b, a)
	})

	t.Run("full reconcile repairs and leaves foreign routes", func(t *testing.T) {
		h, idx := a.NS.H, device(t, a).Index
		if err := h.RouteDel(netlinkx.Route{Dst: b.Subnet, Gw: b.Subnet.Addr(), LinkIndex: idx, OnLink: true}); err != nil {
			t.Fatal(err)
		}
		if err := h.NeighDel(netlinkx.Neigh{LinkIndex: idx, IP: b.Subnet.Addr()}); err != nil {
			t.Fatal(err)
		}
		stale := netlinkx.Route{Dst: pfx("10.244.9.0/24"), Gw: pfx("10.244.9.0/32").Addr(), LinkIndex: idx, OnLink: true}
		foreign := netlinkx.Route{Dst: pfx("172.31.0.0/24"), Gw: pfx("172.31.0.1/32").Addr(), LinkIndex: idx, OnLink: true}
		ownRoute := netlinkx.Route{Dst: a.Subnet, Gw: pfx("10.244.1.77/32").Addr(), LinkIndex: idx, OnLink: true, Priority: 50}
		for _, r := range []netlinkx.Route{stale, foreign, ownRoute} {
			if err := h.RouteReplace(r); err != nil {
				t.Fatal(err)
			}
		}
		staleFDB := netlinkx.FDB{LinkIndex: idx, MAC: netlinkx.MAC{2, 9, 9, 9, 9, 9}, Dst: pfx("192.0.2.99/32").Addr()}
		if err := h.FDBSet(staleFDB); err != nil {
			t.Fatal(err)
		}
		if err := a.b.Reconcile(context.Background(), a.own, leasesOf(vs), true); err != nil {
			t.Fatal(err)
		}
		got := backendtest.Routes(t, h, idx)
		if slices.Contains(got, stale) || !slices.Contains(got, foreign) || !slices.Contains(got, ownRoute) ||
			!slices.ContainsFunc(got, func(r netlinkx.Route) bool { return r.Dst == b.Subnet }) {
			t.Fatalf("after repair routes %v", got)
		}
		if fs, _ := h.FDBList(idx); slices.Contains(fs, staleFDB) || len(fs) != 1 {
			t.Fatalf("after repair fdb %v", fs)
		}
		ping(t, a, b)
	})

	t.Run("lease removed and back, incrementally", func(t *testing.T) {
		before := a.NS.H.Dumps()
		if err := a.b.Reconcile(context.Background(), a.own, []lease.Lease{a.own}, false); err != nil {
			t.Fatal(err)
		}
		if n := a.NS.H.Dumps() - before; n != 0 {
			t.Errorf("incremental reconcile made %d dumps", n)
		}
		if r, n, f := entries(t, a, b.Subnet); len(r)+len(n)+len(f) != 0 {
			t.Fatalf("lease gone but kernel holds routes %v neighs %v fdb %v", r, n, f)
		}
		if err := a.b.Reconcile(context.Background(), a.own, leasesOf(vs), false); err != nil {
			t.Fatal(err)
		}
		ping(t, a, b)
	})

	t.Run("remote MAC change", func(t *testing.T) {
		// b's device is recreated by someone who lost its MAC (a new node
		// on the same subnet): a must follow the new lease data.
		if err := b.NS.H.LinkDel(device(t, b)); err != nil {
			t.Fatal(err)
		}
		fresh := start(t, `{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}`, nodes[1:])[0]
		if fresh.b.MAC() == b.b.MAC() {
			t.Fatal("expected a new MAC")
		}
		vs2 := []*vnode{a, fresh}
		reconcileAll(t, vs2, false)
		if err := fresh.b.Reconcile(context.Background(), fresh.own, leasesOf(vs2), true); err != nil {
			t.Fatal(err)
		}
		_, _, fdb := entries(t, a, b.Subnet)
		if !slices.Equal(fdb, []netlinkx.FDB{{LinkIndex: device(t, a).Index, MAC: fresh.b.MAC(), Dst: b.Ext.PublicIP}}) {
			t.Fatalf("fdb %v", fdb)
		}
		ping(t, a, fresh)
	})
}

func TestDirectRouting(t *testing.T) {
	nodes := backendtest.Cluster(t, pfx("10.244.1.0/24"), pfx("10.244.2.0/24"))
	vs := start(t, `{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","DirectRouting":true,"VNI":4,"Port":4789}}`, nodes)
	a, b := vs[0], vs[1]
	// A stale vxlan route for b, as left by a run without DirectRouting.
	dev := device(t, a)
	if dev.VxlanId != 4 || dev.Port != 4789 || dev.Name != "flannel.4" {
		t.Fatalf("device %s vni %d port %d", dev.Name, dev.VxlanId, dev.Port)
	}
	if err := a.NS.H.RouteReplace(netlinkx.Route{Dst: b.Subnet, Gw: b.Subnet.Addr(), LinkIndex: dev.Index, OnLink: true}); err != nil {
		t.Fatal(err)
	}
	reconcileAll(t, vs, true)
	if got := backendtest.Routes(t, a.NS.H, a.Ext.Index); !slices.Contains(got, netlinkx.Route{Dst: b.Subnet, Gw: b.Ext.PublicIP, LinkIndex: a.Ext.Index}) {
		t.Fatalf("underlay routes %v", got)
	}
	if r, n, f := entries(t, a, b.Subnet); len(r)+len(n)+len(f) != 0 {
		t.Fatalf("direct remote has vxlan state: routes %v neighs %v fdb %v", r, n, f)
	}
	ping(t, a, b)
	ping(t, b, a)

	// A lease that goes away loses its direct route on a full reconcile too.
	if err := a.b.Reconcile(context.Background(), a.own, []lease.Lease{a.own}, true); err != nil {
		t.Fatal(err)
	}
	for _, r := range backendtest.Routes(t, a.NS.H, a.Ext.Index) {
		if r.Dst == b.Subnet {
			t.Fatalf("route %v left after lease removal", r)
		}
	}
}

func TestRecreateOnConfigChange(t *testing.T) {
	nodes := backendtest.Cluster(t, pfx("10.244.1.0/24"))
	v := start(t, `{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}`, nodes)[0]
	idx := device(t, v).Index
	v2 := start(t, `{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan","Port":4789,"MTU":1400}}`, nodes)[0]
	d := device(t, v2)
	if d.Index == idx || d.Port != 4789 || d.MTU != 1400 || v2.b.MAC() != v.b.MAC() {
		t.Fatalf("after port change: ifindex %d (was %d) port %d mtu %d mac %s (was %s)", d.Index, idx, d.Port, d.MTU, v2.b.MAC(), v.b.MAC())
	}
}

// TestRestoredVtepMAC gives the backend the MAC this node published before
// (as the Kubernetes store keeps it): a new device takes it, and so does
// a device whose MAC was changed by hand.
func TestRestoredVtepMAC(t *testing.T) {
	nodes := backendtest.Cluster(t, pfx("10.244.1.0/24"))
	nw := backendtest.Network(t, `{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}`)
	published, _ := net.ParseMAC("0e:11:22:33:44:55")
	for _, step := range []string{"new device", "device with another MAC"} {
		p := nodes[0].Params(nw)
		p.VtepMAC = published
		b, err := vxlan.New(p, nodes[0].NS.H, backendtest.Logger(t))
		if err != nil {
			t.Fatal(err)
		}
		_, data, err := b.LeaseAttrs(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if want := `{"VNI":1,"VtepMAC":"0e:11:22:33:44:55"}`; string(data) != want {
			t.Errorf("%s: backend data %s, want %s", step, data, want)
		}
		l, err := nodes[0].NS.H.LinkByName("flannel.1")
		if err != nil {
			t.Fatal(err)
		}
		if got := l.Attrs().HardwareAddr.String(); got != published.String() {
			t.Errorf("%s: device MAC %s, want %s", step, got, published)
		}
		if _, err := nodes[0].NS.Exec("ip", "link", "set", "flannel.1", "address", "0e:99:99:99:99:99"); err != nil {
			t.Fatal(err)
		}
	}
}

// manyLeases returns n vxlan leases numbered from first, inside 10.0.0.0/8
// (lease i: 10.(1+i/256).(i%256).0/24), with PublicIPs in 198.18.0.0/15.
// No traffic is sent to them; they only fill the tables.
func manyLeases(first, n int) []lease.Lease {
	out := make([]lease.Lease, n)
	for k := range out {
		i := first + k
		out[k] = lease.Lease{
			Subnet: pfx(fmt.Sprintf("10.%d.%d.0/24", 1+i/256, i%256)),
			Attrs: lease.Attrs{
				PublicIP:    netip.MustParseAddr(fmt.Sprintf("198.%d.%d.%d", 18+i/(250*256), i/250%256, i%250+1)),
				BackendType: "vxlan",
				BackendData: json.RawMessage(fmt.Sprintf(`{"VNI":1,"VtepMAC":"02:42:00:%02x:%02x:%02x"}`, i>>16&255, i>>8&255, i&255)),
			},
		}
	}
	return out
}

// scaleNode is one vxlan node in network 10.0.0.0/8 with subnet
// 10.255.255.0/24, outside manyLeases' range. It returns the node and a
// reconcile taking the remote leases.
func scaleNode(t testing.TB) (*vnode, func(ls []lease.Lease, full bool) error) {
	nodes := backendtest.Cluster(t, pfx("10.255.255.0/24"))
	nw := backendtest.Network(t, `{"Network":"10.0.0.0/8","Backend":{"Type":"vxlan"}}`)
	n := nodes[0]
	b, err := vxlan.New(n.Params(nw), n.NS.H, backendtest.Logger(t))
	if err != nil {
		t.Fatal(err)
	}
	typ, data, err := b.LeaseAttrs(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	v := &vnode{Node: n, b: b, own: n.Lease(typ, data)}
	if _, err := b.Configure(context.Background(), v.own); err != nil {
		t.Fatal(err)
	}
	return v, func(ls []lease.Lease, full bool) error {
		return b.Reconcile(context.Background(), v.own, append([]lease.Lease{v.own}, ls...), full)
	}
}

func count(t testing.TB, v *vnode) (routes, neighs, fdb int) {
	t.Helper()
	idx := device(t, v).Index
	ns, _ := v.NS.H.NeighList(idx, netlinkx.FamilyV4)
	fs, _ := v.NS.H.FDBList(idx)
	return len(backendtest.Routes(t, v.NS.H, idx)), len(ns), len(fs)
}

func TestThousandLeases(t *testing.T) {
	v, reconcile := scaleNode(t)
	leases := manyLeases(0, 1000)
	t0 := time.Now()
	if err := reconcile(leases, true); err != nil {
		t.Fatal(err)
	}
	t.Logf("full reconcile programming 1000 leases: %v", time.Since(t0))
	if r, n, f := count(t, v); r != 1000 || n != 1000 || f != 1000 {
		t.Fatalf("programmed %d routes, %d neighbours, %d fdb entries; want 1000 each", r, n, f)
	}
	t0 = time.Now()
	if err := reconcile(leases, true); err != nil {
		t.Fatal(err)
	}
	t.Logf("full reconcile with nothing to change: %v", time.Since(t0))

	more := append(leases, manyLeases(1000, 1)...)
	dumps := v.NS.H.Dumps()
	t0 = time.Now()
	if err := reconcile(more, false); err != nil {
		t.Fatal(err)
	}
	took := time.Since(t0)
	t.Logf("one new lease with 1000 present, incremental: %v", took)
	if n := v.NS.H.Dumps() - dumps; n != 0 {
		t.Errorf("incremental reconcile dumped kernel tables %d times", n)
	}
	if r, n, f := count(t, v); r != 1001 || n != 1001 || f != 1001 {
		t.Fatalf("after one more: %d routes, %d neighbours, %d fdb entries; want 1001 each", r, n, f)
	}
	// The target is 10 ms; allow for a loaded shared machine, but catch a
	// fast path that has become a full pass (~100x slower).
	if took > 100*time.Millisecond {
		t.Errorf("incremental reconcile took %v, target 10ms", took)
	}
	if err := reconcile(leases[1:], false); err != nil {
		t.Fatal(err)
	}
	if r, n, f := count(t, v); r != 999 || n != 999 || f != 999 {
		t.Fatalf("after removing two: %d routes, %d neighbours, %d fdb entries; want 999 each", r, n, f)
	}

	// Update: the same change told as events, written without a dump.
	extra := manyLeases(1000, 1)[0]
	dumps = v.NS.H.Dumps()
	t0 = time.Now()
	if err := v.b.Update(context.Background(), v.own, []lease.Event{{Type: lease.Added, Lease: extra}, {Type: lease.Removed, Lease: leases[1]}}); err != nil {
		t.Fatal(err)
	}
	t.Logf("Update, one lease added and one removed with 999 present: %v", time.Since(t0))
	if n := v.NS.H.Dumps() - dumps; n != 0 {
		t.Errorf("Update dumped kernel tables %d times", n)
	}
	if r, n, f := count(t, v); r != 999 || n != 999 || f != 999 {
		t.Fatalf("after Update: %d routes, %d neighbours, %d fdb entries; want 999 each", r, n, f)
	}
	if !hasRoute(t, v, extra.Subnet) || hasRoute(t, v, leases[1].Subnet) {
		t.Errorf("after Update: route to %s missing or route to %s left", extra.Subnet, leases[1].Subnet)
	}
	// A full pass finds nothing to repair.
	if err := reconcile(append(slices.Clone(leases[2:]), extra), true); err != nil {
		t.Fatal(err)
	}
	if r, n, f := count(t, v); r != 999 || n != 999 || f != 999 {
		t.Fatalf("after the full pass: %d routes, %d neighbours, %d fdb entries; want 999 each", r, n, f)
	}
}

func hasRoute(t *testing.T, v *vnode, dst netip.Prefix) bool {
	t.Helper()
	for _, r := range backendtest.Routes(t, v.NS.H, device(t, v).Index) {
		if r.Dst == dst {
			return true
		}
	}
	return false
}

// BenchmarkReconcile1000 is a full reconcile of 1000 remote leases: "resync"
// when the kernel already matches (three dumps and a diff), "program" when
// every entry changes (the lease set alternates between two disjoint sets of
// 1000, so each op removes 1000 leases' entries and adds 1000).
func BenchmarkReconcile1000(b *testing.B) {
	b.Run("resync", func(b *testing.B) {
		_, reconcile := scaleNode(b)
		leases := manyLeases(0, 1000)
		if err := reconcile(leases, true); err != nil {
			b.Fatal(err)
		}
		for b.Loop() {
			if err := reconcile(leases, true); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("program", func(b *testing.B) {
		_, reconcile := scaleNode(b)
		sets := [2][]lease.Lease{manyLeases(0, 1000), manyLeases(1000, 1000)}
		i := 0
		for b.Loop() {
			if err := reconcile(sets[i%2], true); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
}

// BenchmarkUpdateOneLease is the agent's fast path: one lease added while
// 1000 are programmed, and removed again, as watch events.
func BenchmarkUpdateOneLease(b *testing.B) {
	v, reconcile := scaleNode(b)
	if err := reconcile(manyLeases(0, 1000), true); err != nil {
		b.Fatal(err)
	}
	extra := manyLeases(1000, 1)[0]
	add := []lease.Event{{Type: lease.Added, Lease: extra}}
	del := []lease.Event{{Type: lease.Removed, Lease: extra}}
	b.ResetTimer()
	for range b.N {
		if err := v.b.Update(context.Background(), v.own, add); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if err := v.b.Update(context.Background(), v.own, del); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}

// BenchmarkAddOneLease is the fast path: one new lease arrives while 1000
// are programmed, reconciled incrementally (neighbour, FDB entry, route).
func BenchmarkAddOneLease(b *testing.B) {
	_, reconcile := scaleNode(b)
	leases := manyLeases(0, 1000)
	if err := reconcile(leases, true); err != nil {
		b.Fatal(err)
	}
	more := append(slices.Clone(leases), manyLeases(1000, 1)...)
	b.ResetTimer()
	for range b.N {
		if err := reconcile(more, false); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		if err := reconcile(leases, false); err != nil {
			b.Fatal(err)
		}
		b.StartTimer()
	}
}

// TestReadAhead: a full pass against the kernel read ahead, with changes
// in between: leases added and removed by Update after the read (the read
// is stale), entries deleted by hand before it (the pass repairs them), a
// device recreated after it (the pass reads again). Each time the kernel
// ends up as the lease set says. The read runs beside Update, as in the
// agent (go test -race checks that it shares nothing unsafely).
func TestReadAhead(t *testing.T) {
	v, reconcile := scaleNode(t)
	leases := manyLeases(0, 300)
	if err := reconcile(leases, true); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	idx := device(t, v).Index
	all := func(ls []lease.Lease) []lease.Lease { return append([]lease.Lease{v.own}, ls...) }
	check := func(what string, ls []lease.Lease) {
		t.Helper()
		r, n, f := count(t, v)
		if r != len(ls) || n != len(ls) || f != len(ls) {
			t.Fatalf("%s: %d routes, %d neighbours, %d fdb entries; want %d each", what, r, n, f, len(ls))
		}
		for _, l := range ls {
			if !hasRoute(t, v, l.Subnet) {
				t.Fatalf("%s: no route to %s", what, l.Subnet)
			}
		}
	}

	// Deleted by hand before the read: repaired.
	gone := leases[7]
	for _, c := range []string{"route del " + gone.Subnet.String(), "neigh del " + gone.Subnet.Addr().String() + " dev " + v.b.Name()} {
		if out, err := v.NS.Exec("ip", strings.Fields(c)...); err != nil {
			t.Fatalf("ip %s: %v %s", c, err, out)
		}
	}
	// The read, while Update adds leases and removes one.
	extra := manyLeases(300, 20)
	done := make(chan struct{})
	var pass func(context.Context, lease.Lease, []lease.Lease) error
	var readErr error
	go func() {
		defer close(done)
		pass, readErr = v.b.ReadAhead(ctx)
	}()
	for _, l := range extra {
		if err := v.b.Update(ctx, v.own, []lease.Event{{Type: lease.Added, Lease: l}}); err != nil {
			t.Fatal(err)
		}
	}
	<-done
	if readErr != nil {
		t.Fatal(readErr)
	}
	removed := leases[3]
	if err := v.b.Update(ctx, v.own, []lease.Event{{Type: lease.Removed, Lease: removed}}); err != nil {
		t.Fatal(err)
	}
	now := append(slices.Delete(slices.Clone(leases), 3, 4), extra...)
	if err := pass(ctx, v.own, all(now)); err != nil {
		t.Fatal(err)
	}
	check("after a pass with a stale read", now)
	if hasRoute(t, v, removed.Subnet) {
		t.Fatalf("the route to %s, removed after the read, is back", removed.Subnet)
	}

	// Device recreated after the read: the pass reads again.
	pass, err := v.b.ReadAhead(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := v.NS.H.LinkDel(device(t, v)); err != nil {
		t.Fatal(err)
	}
	if err := pass(ctx, v.own, all(now)); err != nil {
		t.Fatal(err)
	}
	if device(t, v).Index == idx {
		t.Fatalf("flannel.1 has its old ifindex %d", idx)
	}
	check("after a pass over a recreated device", now)
	// And the backend goes on from there: an update needs no full pass.
	if err := v.b.Update(ctx, v.own, []lease.Event{{Type: lease.Removed, Lease: now[0]}}); err != nil {
		t.Fatal(err)
	}
	check("after one more update", now[1:])
}
