package netif

import (
	"log/slog"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/weft-net/weft/internal/netlinkx/nstest"
)

// TestSelectOnKernel reads a real namespace: two veth links, ext0 with the
// default routes and int1 with routes to test-only prefixes. The kernel is
// only asked (route lookups); nothing is sent.
func TestSelectOnKernel(t *testing.T) {
	a, b := nstest.New(t), nstest.New(t)
	nstest.Veth(t, a, "ext0", netip.MustParsePrefix("192.0.2.10/24"), b, "p0", netip.MustParsePrefix("192.0.2.1/24"))
	int1, _ := nstest.Veth(t, a, "int1", netip.MustParsePrefix("10.9.0.5/16"), b, "p1", netip.MustParsePrefix("10.9.0.1/16"))
	if err := a.H.LinkSetMTU(int1, 9000); err != nil {
		t.Fatal(err)
	}
	ip := func(args ...string) {
		t.Helper()
		if _, err := a.Exec("ip", args...); err != nil {
			t.Fatal(err)
		}
	}
	// nodad: usable at once, as source addresses and for on-link gateways.
	ip("-6", "addr", "add", "2001:db8:a::10/64", "dev", "ext0", "nodad")
	ip("-6", "addr", "add", "fd00:9::5/64", "dev", "int1", "nodad")
	log := slog.New(slog.NewTextHandler(t.Output(), nil))

	// No default route yet: the error says so.
	if _, err := SelectOn(a.H, Spec{}, IPv4, log); err == nil || !strings.Contains(err.Error(), "no IPv4 default route") {
		t.Fatalf("without a default route: err = %v", err)
	}
	if _, err := SelectOn(a.H, Spec{}, IPv6, log); err == nil || !strings.Contains(err.Error(), "no IPv6 default route") {
		t.Fatalf("without an IPv6 default route: err = %v", err)
	}
	ip("route", "add", "default", "via", "192.0.2.1", "dev", "ext0")
	ip("-6", "route", "add", "default", "via", "2001:db8:a::1", "dev", "ext0")
	ip("route", "add", "198.51.100.0/24", "via", "10.9.0.1", "dev", "int1")
	ip("-6", "route", "add", "2001:db8:77::/48", "via", "fd00:9::1", "dev", "int1")
	ip("route", "add", "unreachable", "10.200.0.0/16")

	tests := []struct {
		name  string
		spec  Spec
		stack Stack
		want  string // name addr addr6 public public6 mtu
	}{
		{"default route", Spec{}, IPv4, "ext0 192.0.2.10 - public 192.0.2.10 - 1500"},
		{"default route v6", Spec{}, IPv6, "ext0 - 2001:db8:a::10 public - 2001:db8:a::10 1500"},
		{"default routes dual", Spec{}, DualStack, "ext0 192.0.2.10 2001:db8:a::10 public 192.0.2.10 2001:db8:a::10 1500"},
		{"iface missing, then present", Spec{Ifaces: []string{"eth9", "int1"}}, IPv4, "int1 10.9.0.5 - public 10.9.0.5 - 9000"},
		{"iface missing, then regex", Spec{Ifaces: []string{"eth9"}, Regexes: []string{`^int`}}, IPv4, "int1 10.9.0.5 - public 10.9.0.5 - 9000"},
		{"iface by address", Spec{Ifaces: []string{"10.9.0.5"}}, IPv4, "int1 10.9.0.5 - public 10.9.0.5 - 9000"},
		{"public ip held by the second interface", Spec{PublicIP: netip.MustParseAddr("10.9.0.5")}, IPv4, "int1 10.9.0.5 - public 10.9.0.5 - 9000"},
		{"regex by address", Spec{Regexes: []string{`^10\.9\.`}}, IPv4, "int1 10.9.0.5 - public 10.9.0.5 - 9000"},
		{"regex by name", Spec{Regexes: []string{`^int1$`}}, IPv4, "int1 10.9.0.5 - public 10.9.0.5 - 9000"},
		{"regex by address v6", Spec{Regexes: []string{`^fd00:9::`}}, IPv6, "int1 - fd00:9::5 public - fd00:9::5 9000"},
		{"can reach by the second interface", Spec{CanReach: netip.MustParseAddr("198.51.100.7")}, IPv4, "int1 10.9.0.5 - public 10.9.0.5 - 9000"},
		{"can reach by the default route", Spec{CanReach: netip.MustParseAddr("203.0.113.1")}, IPv4, "ext0 192.0.2.10 - public 192.0.2.10 - 1500"},
		{"can reach v6", Spec{CanReach: netip.MustParseAddr("2001:db8:77::1")}, IPv6, "int1 - fd00:9::5 public - fd00:9::5 9000"},
		{"public ipv6 held by the second interface", Spec{PublicIPv6: netip.MustParseAddr("fd00:9::5")}, IPv6, "int1 - fd00:9::5 public - fd00:9::5 9000"},
		{"public ipv6 with iface address, dual", Spec{Ifaces: []string{"10.9.0.5"}, PublicIPv6: netip.MustParseAddr("fd00:9::5")}, DualStack, "int1 10.9.0.5 fd00:9::5 public 10.9.0.5 fd00:9::5 9000"},
		{"public ip elsewhere", Spec{Ifaces: []string{"int1"}, PublicIP: netip.MustParseAddr("203.0.113.7")}, IPv4, "int1 10.9.0.5 - public 203.0.113.7 - 9000"},
	}
	for _, tt := range tests {
		ext, err := SelectOn(a.H, tt.spec, tt.stack, log)
		if err != nil {
			t.Errorf("%s: %v", tt.name, err)
			continue
		}
		if got := describe(ext) + " " + strconv.Itoa(ext.MTU); got != tt.want {
			t.Errorf("%s:\ngot  %s\nwant %s", tt.name, got, tt.want)
		}
		if l := a.Link(t, ext.Name); l.Attrs().Index != ext.Index {
			t.Errorf("%s: %s index %d, kernel says %d", tt.name, ext.Name, ext.Index, l.Attrs().Index)
		}
	}
	ext, err := SelectOn(a.H, Spec{Ifaces: []string{"int1"}}, DualStack, log)
	if err != nil || ext.Subnet != netip.MustParsePrefix("10.9.0.0/16") || ext.Subnet6 != netip.MustParsePrefix("fd00:9::/64") {
		t.Errorf("int1 subnets: %+v, %v", ext, err)
	}

	// The error lists every candidate and why it did not fit.
	_, err = SelectOn(a.H, Spec{
		Ifaces:   []string{"eth9", "10.1.2.3"},
		Regexes:  []string{"^bond"},
		CanReach: netip.MustParseAddr("10.200.0.1"),
	}, IPv4, log)
	for _, want := range []string{
		"--iface eth9: no interface named eth9; ",
		"--iface 10.1.2.3: no interface has address 10.1.2.3; ",
		"--iface-regex ^bond: matches no usable address and no interface name; ",
		"--iface-can-reach 10.200.0.1: route get 10.200.0.1: no route to host; ",
		"interfaces: lo [127.0.0.1/8 ::1/128], ext0 [192.0.2.10/24 2001:db8:a::10/64 fe80::",
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("err = %v\nwant it to contain %q", err, want)
		}
	}
	if _, err := SelectOn(a.H, Spec{PublicIP: netip.MustParseAddr("203.0.113.50")}, IPv4, log); err == nil ||
		!strings.Contains(err.Error(), "the interface holding --public-ip 203.0.113.50 is used: no interface has address 203.0.113.50") {
		t.Errorf("public ip not local: err = %v", err)
	}

	// Dual stack needs the default routes on one interface.
	ip("-6", "route", "add", "default", "via", "fd00:9::1", "dev", "int1", "metric", "1")
	if _, err := SelectOn(a.H, Spec{}, DualStack, log); err == nil ||
		!strings.Contains(err.Error(), "the IPv6 default route leaves by int1, the IPv4 one by ext0") {
		t.Errorf("split default routes: err = %v", err)
	}
	if ext, err := SelectOn(a.H, Spec{}, IPv6, log); err != nil || ext.Name != "int1" {
		t.Errorf("v6 default route by metric: %+v, %v; want int1", ext, err)
	}
}

// TestSelectOnKernelAddressRanking: the kernel's address flags rank the
// addresses as flannel does, whatever order the kernel lists them in.
func TestSelectOnKernelAddressRanking(t *testing.T) {
	a, b := nstest.New(t), nstest.New(t)
	dyn0, _ := nstest.Veth(t, a, "dyn0", netip.Prefix{}, b, "p0", netip.Prefix{})
	ip := func(args ...string) {
		t.Helper()
		if _, err := a.Exec("ip", args...); err != nil {
			t.Fatal(err)
		}
	}
	// IPv4 lists primaries in the order added, IPv6 newest first: add so
	// that the kernel lists the worse address first.
	ip("addr", "add", "10.7.0.4/24", "dev", "dyn0", "valid_lft", "3600", "preferred_lft", "3600")
	ip("addr", "add", "10.7.1.4/24", "dev", "dyn0")
	ip("-6", "addr", "add", "2001:db8:7::6/64", "dev", "dyn0", "nodad")
	ip("-6", "addr", "add", "2001:db8:7::4/64", "dev", "dyn0", "nodad", "valid_lft", "3600", "preferred_lft", "3600")
	ip("-6", "addr", "add", "2001:db8:7::5/64", "dev", "dyn0", "nodad", "valid_lft", "3600", "preferred_lft", "0")

	links, err := Host{H: a.H}.Links()
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(links, func(l Link) bool { return l.Name == "dyn0" })
	if i < 0 || links[i].Index != dyn0.Attrs().Index {
		t.Fatalf("dyn0 not listed: %+v", links)
	}
	var order []string
	for _, x := range links[i].Addrs {
		if x.Prefix.Addr().IsGlobalUnicast() {
			order = append(order, x.Prefix.Addr().String())
		}
	}
	if !slices.Equal(order, []string{"10.7.0.4", "10.7.1.4", "2001:db8:7::5", "2001:db8:7::4", "2001:db8:7::6"}) {
		t.Fatalf("precondition: the kernel lists %v; the test needs the dynamic addresses first", order)
	}
	flags := map[string]Addr{}
	for _, x := range links[i].Addrs {
		flags[x.Prefix.Addr().String()] = x
	}
	if !flags["10.7.1.4"].Permanent || flags["10.7.0.4"].Permanent || !flags["2001:db8:7::5"].Deprecated || flags["2001:db8:7::4"].Deprecated {
		t.Errorf("flags read: %+v", flags)
	}

	ext, err := SelectOn(a.H, Spec{Ifaces: []string{"dyn0"}}, DualStack, nil)
	if err != nil || ext.Addr != netip.MustParseAddr("10.7.1.4") || ext.Addr6 != netip.MustParseAddr("2001:db8:7::6") {
		t.Errorf("got %s, %v; want the permanent 10.7.1.4 and 2001:db8:7::6", describe(ext), err)
	}
	// Without the permanent IPv6 address, the dynamic one, never the deprecated one.
	if err := a.H.AddrDel(dyn0, netip.MustParsePrefix("2001:db8:7::6/64")); err != nil {
		t.Fatal(err)
	}
	ext, err = SelectOn(a.H, Spec{Ifaces: []string{"dyn0"}}, IPv6, nil)
	if err != nil || ext.Addr6 != netip.MustParseAddr("2001:db8:7::4") {
		t.Errorf("got %s, %v; want 2001:db8:7::4", describe(ext), err)
	}
}
