package netlinkx_test

import (
	"net"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/weft-net/weft/internal/netlinkx"
	"github.com/weft-net/weft/internal/netlinkx/nstest"
)

var mustPrefix = netip.MustParsePrefix
var mustAddr = netip.MustParseAddr

// TestHandle drives every call the backends use against a fresh namespace:
// a veth to a second namespace as underlay and a VXLAN device over it.
func TestHandle(t *testing.T) {
	a, b := nstest.New(t), nstest.New(t)
	h := a.H
	under, _ := nstest.Veth(t, a, "ul0", mustPrefix("192.0.2.1/24"), b, "ul0", mustPrefix("192.0.2.2/24"))

	if _, err := h.LinkByName("nonesuch0"); !netlinkx.IsNotFound(err) {
		t.Fatalf("LinkByName(missing) = %v, want a not-found error", err)
	}

	mac, _ := netlinkx.ParseMAC("02:11:22:33:44:55")
	la := netlinkx.NewLinkAttrs()
	la.Name, la.HardwareAddr = "vx7", mac.HardwareAddr()
	vx := &netlinkx.Vxlan{LinkAttrs: la, VxlanId: 7, Port: 8472, SrcAddr: net.ParseIP("192.0.2.1"), VtepDevIndex: under.Attrs().Index}
	if err := h.LinkAdd(vx); err != nil {
		t.Fatal(err)
	}
	l, err := h.LinkByName("vx7")
	if err != nil {
		t.Fatal(err)
	}
	got, ok := l.(*netlinkx.Vxlan)
	if !ok || got.VxlanId != 7 || got.Port != 8472 || got.Learning || !got.SrcAddr.Equal(net.ParseIP("192.0.2.1")) || got.HardwareAddr.String() != mac.String() {
		t.Fatalf("vxlan read back as %#v", l)
	}
	if err := h.LinkSetMTU(l, 1450); err != nil {
		t.Fatal(err)
	}
	if err := h.LinkSetUp(l); err != nil {
		t.Fatal(err)
	}
	if l, _ = h.LinkByIndex(l.Attrs().Index); l.Attrs().MTU != 1450 || l.Attrs().Flags&net.FlagUp == 0 {
		t.Fatalf("mtu %d flags %v, want 1450 and up", l.Attrs().MTU, l.Attrs().Flags)
	}
	links, err := h.LinkList()
	if err != nil || len(links) != 3 { // lo, ul0, vx7
		t.Fatalf("LinkList = %d links, %v", len(links), err)
	}

	// Addresses.
	own := mustPrefix("10.244.1.0/32")
	for range 2 { // replace is idempotent
		if err := h.AddrReplace(l, own); err != nil {
			t.Fatal(err)
		}
	}
	if addrs, err := h.AddrList(l, netlinkx.FamilyV4); err != nil || !slices.Equal(addrs, []netip.Prefix{own}) {
		t.Fatalf("AddrList = %v, %v", addrs, err)
	}
	for range 2 {
		if err := h.AddrDel(l, own); err != nil {
			t.Fatalf("AddrDel: %v", err)
		}
	}

	// Neighbour and FDB entries, then a route through them.
	idx := l.Attrs().Index
	remote, _ := netlinkx.ParseMAC("c6:d2:32:6f:8f:44")
	n := netlinkx.Neigh{LinkIndex: idx, IP: mustAddr("10.244.2.0"), MAC: remote, State: netlinkx.NUDPermanent}
	f := netlinkx.FDB{LinkIndex: idx, MAC: remote, Dst: mustAddr("192.0.2.2")}
	if err := h.NeighSet(n); err != nil {
		t.Fatal(err)
	}
	if err := h.FDBSet(f); err != nil {
		t.Fatal(err)
	}
	if ns, err := h.NeighList(idx, netlinkx.FamilyV4); err != nil || !slices.Contains(ns, n) {
		t.Fatalf("NeighList = %v, %v; want %v in it", ns, err, n)
	}
	if fs, err := h.FDBList(idx); err != nil || !slices.Equal(fs, []netlinkx.FDB{f}) {
		t.Fatalf("FDBList = %v, %v; want [%v]", fs, err, f)
	}
	f2 := f
	f2.Dst = mustAddr("192.0.2.3")
	if err := h.FDBSet(f2); err != nil {
		t.Fatal(err)
	}
	if fs, err := h.FDBList(idx); err != nil || !slices.Equal(fs, []netlinkx.FDB{f2}) {
		t.Fatalf("after replace FDBList = %v, %v; want [%v]", fs, err, f2)
	}

	r := netlinkx.Route{Dst: mustPrefix("10.244.2.0/24"), Gw: mustAddr("10.244.2.0"), LinkIndex: idx, OnLink: true}
	if err := h.RouteReplace(r); err != nil {
		t.Fatal(err)
	}
	dev := netlinkx.Route{Dst: mustPrefix("10.244.3.0/24"), LinkIndex: under.Attrs().Index, Table: 100}
	if err := h.RouteReplace(dev); err != nil {
		t.Fatal(err)
	}
	if rs, err := h.RouteList(netlinkx.RouteFilter{Family: netlinkx.FamilyV4, LinkIndex: idx}); err != nil || !slices.Equal(rs, []netlinkx.Route{r}) {
		t.Fatalf("RouteList(dev vx7) = %v, %v; want [%v]", rs, err, r)
	}
	if rs, err := h.RouteList(netlinkx.RouteFilter{Table: 100}); err != nil || !slices.Equal(rs, []netlinkx.Route{dev}) {
		t.Fatalf("RouteList(table 100) = %v, %v; want [%v]", rs, err, dev)
	}
	all, err := h.RouteList(netlinkx.RouteFilter{Family: netlinkx.FamilyV4, Table: netlinkx.TableAll})
	if err != nil || !slices.Contains(all, r) || !slices.Contains(all, dev) {
		t.Fatalf("RouteList(all tables) = %v, %v", all, err)
	}
	// Main table only by default: the connected route of ul0 and ours.
	main, err := h.RouteList(netlinkx.RouteFilter{Family: netlinkx.FamilyV4})
	if err != nil || slices.Contains(main, dev) || !slices.Contains(main, r) {
		t.Fatalf("RouteList(main) = %v, %v", main, err)
	}
	r.Gw = mustAddr("10.244.2.1")
	if err := h.RouteReplace(r); err != nil {
		t.Fatal(err)
	}
	if rs, _ := h.RouteList(netlinkx.RouteFilter{Family: netlinkx.FamilyV4, LinkIndex: idx}); !slices.Equal(rs, []netlinkx.Route{r}) {
		t.Fatalf("after replace RouteList = %v, want [%v]", rs, r)
	}

	// Deletes are idempotent.
	for range 2 {
		for _, err := range []error{h.RouteDel(r), h.RouteDel(dev), h.NeighDel(n), h.FDBDel(f2)} {
			if err != nil {
				t.Fatalf("delete: %v", err)
			}
		}
	}
	rs, _ := h.RouteList(netlinkx.RouteFilter{Family: netlinkx.FamilyV4, LinkIndex: idx})
	fs, _ := h.FDBList(idx)
	ns, _ := h.NeighList(idx, netlinkx.FamilyV4)
	if len(rs)+len(fs) != 0 || slices.ContainsFunc(ns, func(x netlinkx.Neigh) bool { return x.IP == n.IP }) {
		t.Fatalf("left after delete: routes %v fdb %v neigh %v", rs, fs, ns)
	}

	if err := h.LinkDel(l); err != nil {
		t.Fatal(err)
	}
	if err := h.LinkDel(l); err != nil {
		t.Fatalf("second LinkDel: %v", err)
	}
	if _, err := h.LinkByName("vx7"); !netlinkx.IsNotFound(err) {
		t.Fatalf("after delete LinkByName = %v", err)
	}
}

func TestNewCurrentNamespace(t *testing.T) {
	h, err := netlinkx.New()
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if _, err := h.LinkByName("lo"); err != nil {
		t.Fatalf("lo in the current namespace: %v", err)
	}
}

// TestBlackhole adds, lists and deletes blackhole routes of both families,
// and shows that a connected route to the same IPv4 subnet has its place.
func TestBlackhole(t *testing.T) {
	a, b := nstest.New(t), nstest.New(t)
	h := a.H
	v4, v6 := mustPrefix("10.244.1.0/24"), mustPrefix("fd00:10:244:1::/64")
	for _, p := range []netip.Prefix{v4, v6} {
		if err := h.BlackholeAdd(p); err != nil {
			t.Fatal(err)
		}
		if err := h.BlackholeAdd(p); !netlinkx.IsExist(err) {
			t.Errorf("second BlackholeAdd(%s) = %v, want an exists error", p, err)
		}
	}
	list := func(f netlinkx.Family) []netip.Prefix {
		t.Helper()
		ps, err := h.BlackholeList(f)
		if err != nil {
			t.Fatal(err)
		}
		return ps
	}
	if got := list(netlinkx.FamilyAll); !slices.Equal(got, []netip.Prefix{v4, v6}) {
		t.Errorf("BlackholeList(all) = %v", got)
	}
	if got := list(netlinkx.FamilyV6); !slices.Equal(got, []netip.Prefix{v6}) {
		t.Errorf("BlackholeList(v6) = %v", got)
	}
	if out, err := a.Exec("ip", "route", "show", "type", "blackhole"); err != nil || !strings.Contains(out, "blackhole 10.244.1.0/24") {
		t.Errorf("ip route show type blackhole: %v\n%s", err, out)
	}
	// RouteList is unicast only: the backends never see a blackhole.
	if rs, err := h.RouteList(netlinkx.RouteFilter{Family: netlinkx.FamilyV4}); err != nil || len(rs) != 0 {
		t.Errorf("RouteList = %v, %v; want no unicast routes", rs, err)
	}
	for range 2 { // deleting what is gone is no error
		for _, p := range []netip.Prefix{v4, v6} {
			if err := h.BlackholeDel(p); err != nil {
				t.Fatal(err)
			}
		}
	}
	if got := list(netlinkx.FamilyAll); len(got) != 0 {
		t.Errorf("after delete: %v", got)
	}

	// Beside an interface holding an address in the subnet, the blackhole
	// is the fallback: the interface's route wins while it exists.
	nstest.Veth(t, a, "ul0", mustPrefix("10.244.1.1/24"), b, "ul0", mustPrefix("10.244.1.2/24"))
	if err := h.BlackholeAdd(v4); err != nil {
		t.Fatalf("BlackholeAdd beside a connected route: %v", err)
	}
	ul0, err := h.LinkByName("ul0")
	if err != nil {
		t.Fatal(err)
	}
	if r, err := h.RouteGet(netip.MustParseAddr("10.244.1.2")); err != nil || r.LinkIndex != ul0.Attrs().Index {
		t.Errorf("route to a pod address beside the blackhole: %+v, %v; want via ul0", r, err)
	}
	if err := h.BlackholeDel(v4); err != nil {
		t.Errorf("BlackholeDel: %v", err)
	}
	if got := list(netlinkx.FamilyV4); len(got) != 0 {
		t.Errorf("blackholes after BlackholeDel: %v", got)
	}
	if rs, _ := h.RouteList(netlinkx.RouteFilter{Family: netlinkx.FamilyV4}); len(rs) != 1 || rs[0].Dst != v4 {
		t.Errorf("connected route after BlackholeDel: %v", rs)
	}
	// Without the interface's route the blackhole catches the subnet.
	if err := h.BlackholeAdd(v4); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Exec("ip", "link", "del", "ul0"); err != nil {
		t.Fatal(err)
	}
	if _, err := h.RouteGet(netip.MustParseAddr("10.244.1.2")); err == nil {
		t.Errorf("route to a pod address with only the blackhole left: found, want the kernel's refusal")
	}
}

// TestRouteLookups asks the kernel of a fresh namespace which way
// packets would go (nothing is sent) and reads address flags.
func TestRouteLookups(t *testing.T) {
	a, b := nstest.New(t), nstest.New(t)
	h := a.H
	ul0, _ := nstest.Veth(t, a, "ul0", mustPrefix("192.0.2.1/24"), b, "ul0", mustPrefix("192.0.2.2/24"))
	ul1, _ := nstest.Veth(t, a, "ul1", mustPrefix("198.51.100.1/24"), b, "ul1", mustPrefix("198.51.100.2/24"))
	ip := func(args ...string) {
		t.Helper()
		if _, err := a.Exec("ip", args...); err != nil {
			t.Fatal(err)
		}
	}

	for _, f := range []netlinkx.Family{netlinkx.FamilyV4, netlinkx.FamilyV6} {
		if idx, ok, err := h.DefaultRouteLink(f); err != nil || ok {
			t.Fatalf("DefaultRouteLink(%d) without one = %d, %v, %v", f, idx, ok, err)
		}
	}
	if err := h.RouteReplace(netlinkx.Route{Dst: mustPrefix("203.0.113.0/24"), Gw: mustAddr("198.51.100.2"), LinkIndex: ul1.Attrs().Index}); err != nil {
		t.Fatal(err)
	}
	if _, err := h.RouteGet(mustAddr("10.1.1.1")); err == nil {
		t.Fatal("RouteGet without a route succeeded")
	}
	ip("-6", "addr", "add", "2001:db8:1::1/64", "dev", "ul0", "nodad")
	ip("route", "add", "default", "via", "192.0.2.2", "dev", "ul0", "metric", "100")
	ip("route", "add", "default", "via", "198.51.100.2", "dev", "ul1", "metric", "50")
	ip("-6", "route", "add", "default", "via", "2001:db8:1::2", "dev", "ul0", "metric", "100")

	lookups := []struct {
		dst  string
		want netlinkx.RouteLookup
	}{
		{"203.0.113.9", netlinkx.RouteLookup{LinkIndex: ul1.Attrs().Index, Src: mustAddr("198.51.100.1"), Gw: mustAddr("198.51.100.2")}},
		{"192.0.2.77", netlinkx.RouteLookup{LinkIndex: ul0.Attrs().Index, Src: mustAddr("192.0.2.1")}},
		{"10.1.1.1", netlinkx.RouteLookup{LinkIndex: ul1.Attrs().Index, Src: mustAddr("198.51.100.1"), Gw: mustAddr("198.51.100.2")}}, // default, metric 50
		{"2001:db8:9::1", netlinkx.RouteLookup{LinkIndex: ul0.Attrs().Index, Src: mustAddr("2001:db8:1::1"), Gw: mustAddr("2001:db8:1::2")}},
	}
	for _, l := range lookups {
		got, err := h.RouteGet(mustAddr(l.dst))
		if err != nil || got != l.want {
			t.Errorf("RouteGet(%s) = %+v, %v; want %+v", l.dst, got, err, l.want)
		}
	}
	if idx, ok, err := h.DefaultRouteLink(netlinkx.FamilyV4); err != nil || !ok || idx != ul1.Attrs().Index {
		t.Errorf("DefaultRouteLink(v4) = %d, %v, %v; want ul1 (#%d), the lower metric", idx, ok, err, ul1.Attrs().Index)
	}
	if idx, ok, err := h.DefaultRouteLink(netlinkx.FamilyV6); err != nil || !ok || idx != ul0.Attrs().Index {
		t.Errorf("DefaultRouteLink(v6) = %d, %v, %v; want ul0 (#%d)", idx, ok, err, ul0.Attrs().Index)
	}
	// An IPv4 blackhole default ahead of the others names no interface.
	ip("route", "add", "blackhole", "default", "metric", "10")
	if idx, ok, err := h.DefaultRouteLink(netlinkx.FamilyV4); err != nil || !ok || idx != 0 {
		t.Errorf("DefaultRouteLink(v4) with a blackhole first = %d, %v, %v; want 0, true", idx, ok, err)
	}

	// Address flags: manual addresses are permanent, a second one in the
	// same IPv4 subnet is secondary, one with finite lifetimes is dynamic
	// and, with preferred_lft 0, deprecated.
	ip("addr", "add", "192.0.2.5/24", "dev", "ul0")
	ip("-6", "addr", "add", "2001:db8:2::1/64", "dev", "ul0", "nodad", "valid_lft", "3600", "preferred_lft", "0")
	addrs, err := h.Addrs(ul0, netlinkx.FamilyAll)
	if err != nil {
		t.Fatal(err)
	}
	flags := map[netip.Prefix]int{}
	for _, x := range addrs {
		flags[x.Prefix] = x.Flags
	}
	const mask = netlinkx.AddrFPermanent | netlinkx.AddrFTemporary | netlinkx.AddrFDeprecated
	for p, want := range map[string]int{
		"192.0.2.1/24":     netlinkx.AddrFPermanent,
		"192.0.2.5/24":     netlinkx.AddrFPermanent | netlinkx.AddrFTemporary,
		"2001:db8:1::1/64": netlinkx.AddrFPermanent,
		"2001:db8:2::1/64": netlinkx.AddrFDeprecated,
	} {
		got, ok := flags[mustPrefix(p)]
		if !ok || got&mask != want {
			t.Errorf("%s: flags %#x (listed %v), want %#x; all: %v", p, got&mask, ok, want, addrs)
		}
	}
}

// SetSysctl writes in the handle's namespace, not the test process's.
func TestSetSysctl(t *testing.T) {
	n := nstest.New(t)
	const key = "net/ipv6/conf/lo/accept_ra"
	host, err := os.ReadFile("/proc/sys/" + key)
	if err != nil {
		t.Skipf("no IPv6 sysctls here: %v", err)
	}
	want := "0"
	if strings.TrimSpace(string(host)) == "0" {
		want = "2"
	}
	if err := n.H.SetSysctl(key, want); err != nil {
		t.Fatal(err)
	}
	var got []byte
	if err := n.NetNS.Do(func(ns.NetNS) error {
		var err error
		got, err = os.ReadFile("/proc/sys/" + key)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if strings.TrimSpace(string(got)) != want {
		t.Errorf("in the namespace %s = %q, want %q", key, got, want)
	}
	if after, _ := os.ReadFile("/proc/sys/" + key); string(after) != string(host) {
		t.Errorf("the test process's own %s changed from %q to %q", key, host, after)
	}
	if err := n.H.SetSysctl("net/ipv6/conf/no-such-dev/accept_ra", "0"); err == nil {
		t.Error("SetSysctl of a missing key succeeded")
	}
}
