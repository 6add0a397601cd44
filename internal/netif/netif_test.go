package netif

import (
	"bytes"
	"errors"
	"log/slog"
	"net/netip"
	"strings"
	"testing"
)

// host is a snapshot of a host, as the Linux reader would return it.
type host struct {
	links  []Link
	routes map[netip.Addr]route // RouteGet answers
	def4   int                  // DefaultRoute answers; -1: none
	def6   int
}

type route struct {
	index int
	src   netip.Addr
}

func (h host) Links() ([]Link, error) { return h.links, nil }

func (h host) RouteGet(dst netip.Addr) (int, netip.Addr, error) {
	r, ok := h.routes[dst]
	if !ok {
		return 0, netip.Addr{}, errors.New("network is unreachable")
	}
	return r.index, r.src, nil
}

func (h host) DefaultRoute(ipv6 bool) (int, error) {
	idx := h.def4
	if ipv6 {
		idx = h.def6
	}
	if idx < 0 {
		return 0, ErrNoDefaultRoute
	}
	return idx, nil
}

var ip = netip.MustParseAddr

// perm is a manually configured address, dyn an autoconfigured one.
func perm(p string) Addr { return Addr{Prefix: netip.MustParsePrefix(p), Permanent: true} }
func dyn(p string) Addr  { return Addr{Prefix: netip.MustParsePrefix(p)} }

func testHost() host {
	return host{
		links: []Link{
			{Name: "lo", Index: 1, MTU: 65536, Addrs: []Addr{perm("127.0.0.1/8"), perm("::1/128")}},
			{Name: "eth0", Index: 2, MTU: 1500, Addrs: []Addr{
				perm("fe80::a/64"), perm("169.254.3.3/16"), perm("192.0.2.10/24"),
				{Prefix: netip.MustParsePrefix("192.0.2.11/24"), Permanent: true, Temporary: true}, // secondary
				perm("2001:db8:0:1::10/64"),
			}},
			{Name: "eth1", Index: 3, MTU: 9000, Addrs: []Addr{perm("10.0.0.5/16"), perm("fd00:1::5/64")}},
			{Name: "wg0", Index: 4, MTU: 1420},
			// Every ranking rule at once, in the worst kernel order.
			{Name: "eth2", Index: 5, MTU: 1500, Addrs: []Addr{
				perm("fe80::2/64"),
				{Prefix: netip.MustParsePrefix("2001:db8:2::aaaa/64"), Temporary: true},
				dyn("2001:db8:2::bbbb/64"),
				{Prefix: netip.MustParsePrefix("2001:db8:2::dead/64"), Permanent: true, Deprecated: true},
				perm("2001:db8:2::cccc/64"),
				dyn("198.51.100.7/24"), perm("198.51.100.8/24"),
			}},
			{Name: "ll0", Index: 6, MTU: 1500, Addrs: []Addr{perm("169.254.9.9/16"), perm("fe80::9/64")}},
			{Name: "nomtu", Index: 7, MTU: 0, Addrs: []Addr{perm("203.0.113.5/24")}},
			// IPv4 only, no IPv6.
			{Name: "v4only", Index: 8, MTU: 1500, Addrs: []Addr{perm("10.8.0.1/24")}},
		},
		routes: map[netip.Addr]route{
			ip("10.0.200.1"):  {3, ip("10.0.0.5")},
			ip("192.0.2.99"):  {2, ip("192.0.2.11")},
			ip("2001:db8::1"): {5, ip("2001:db8:2::bbbb")},
			ip("10.99.0.1"):   {42, ip("10.0.0.5")},
			ip("10.77.0.1"):   {4, netip.Addr{}},
		},
		def4: 2,
		def6: 2,
	}
}

// describe renders the parts of ext the tests compare: name, Addr,
// Addr6, then the public addresses.
func describe(ext External) string {
	a := func(x netip.Addr) string {
		if !x.IsValid() {
			return "-"
		}
		return x.String()
	}
	return strings.Join([]string{ext.Name, a(ext.Addr), a(ext.Addr6), "public", a(ext.PublicIP), a(ext.PublicIPv6)}, " ")
}

func TestSelect(t *testing.T) {
	tests := []struct {
		name  string
		spec  Spec
		stack Stack
		want  string
	}{
		// No interface rule: the default route, or the holder of the public address.
		{"default route", Spec{}, IPv4, "eth0 192.0.2.10 - public 192.0.2.10 -"},
		{"default route v6", Spec{}, IPv6, "eth0 - 2001:db8:0:1::10 public - 2001:db8:0:1::10"},
		{"default route dual", Spec{}, DualStack, "eth0 192.0.2.10 2001:db8:0:1::10 public 192.0.2.10 2001:db8:0:1::10"},
		{"public ip selects its holder", Spec{PublicIP: ip("10.0.0.5")}, IPv4, "eth1 10.0.0.5 - public 10.0.0.5 -"},
		{"public ip wins over public ipv6", Spec{PublicIP: ip("10.0.0.5"), PublicIPv6: ip("2001:db8:0:1::10")}, IPv4, "eth1 10.0.0.5 - public 10.0.0.5 2001:db8:0:1::10"},
		{"public ipv6 selects its holder", Spec{PublicIPv6: ip("fd00:1::5")}, IPv6, "eth1 - fd00:1::5 public - fd00:1::5"},
		{"public ipv6 selects its holder, dual", Spec{PublicIPv6: ip("fd00:1::5")}, DualStack, "eth1 10.0.0.5 fd00:1::5 public 10.0.0.5 fd00:1::5"},
		{"public ip and ipv6 on one interface, dual", Spec{PublicIP: ip("192.0.2.11"), PublicIPv6: ip("2001:db8:0:1::10")}, DualStack, "eth0 192.0.2.11 2001:db8:0:1::10 public 192.0.2.11 2001:db8:0:1::10"},

		// --iface: names and addresses, in order.
		{"iface by name", Spec{Ifaces: []string{"eth1"}}, IPv4, "eth1 10.0.0.5 - public 10.0.0.5 -"},
		{"iface by address picks that address", Spec{Ifaces: []string{"192.0.2.11"}}, IPv4, "eth0 192.0.2.11 - public 192.0.2.11 -"},
		{"iface by link-local address", Spec{Ifaces: []string{"169.254.3.3"}}, IPv4, "eth0 169.254.3.3 - public 169.254.3.3 -"},
		{"iface first missing, then present", Spec{Ifaces: []string{"eth9", "10.9.9.9", "eth1", "eth0"}}, IPv4, "eth1 10.0.0.5 - public 10.0.0.5 -"},
		{"iface without IPv4 address falls through", Spec{Ifaces: []string{"wg0", "eth0"}}, IPv4, "eth0 192.0.2.10 - public 192.0.2.10 -"},
		{"iface without MTU falls through", Spec{Ifaces: []string{"nomtu", "eth1"}}, IPv4, "eth1 10.0.0.5 - public 10.0.0.5 -"},
		{"iface without IPv6 address falls through, dual", Spec{Ifaces: []string{"v4only", "eth1"}}, DualStack, "eth1 10.0.0.5 fd00:1::5 public 10.0.0.5 fd00:1::5"},
		{"iface wins over regex", Spec{Ifaces: []string{"eth1"}, Regexes: []string{"eth0"}}, IPv4, "eth1 10.0.0.5 - public 10.0.0.5 -"},
		{"iface missing, then regex", Spec{Ifaces: []string{"eth9"}, Regexes: []string{`^eth1$`}}, IPv4, "eth1 10.0.0.5 - public 10.0.0.5 -"},
		{"iface and regex miss, then can-reach", Spec{Ifaces: []string{"eth9"}, Regexes: []string{`^bond`}, CanReach: ip("10.0.200.1")}, IPv4, "eth1 10.0.0.5 - public 10.0.0.5 -"},
		{"iface by address v6", Spec{Ifaces: []string{"fd00:1::5"}}, IPv6, "eth1 - fd00:1::5 public - fd00:1::5"},
		{"iface by name v6", Spec{Ifaces: []string{"eth2"}}, IPv6, "eth2 - 2001:db8:2::cccc public - 2001:db8:2::cccc"},
		{"iface v4 address, dual: first IPv6 of it", Spec{Ifaces: []string{"10.0.0.5"}}, DualStack, "eth1 10.0.0.5 fd00:1::5 public 10.0.0.5 fd00:1::5"},
		{"iface v4 address and public ipv6 on it, dual", Spec{Ifaces: []string{"192.0.2.10"}, PublicIPv6: ip("2001:db8:0:1::10")}, DualStack, "eth0 192.0.2.10 2001:db8:0:1::10 public 192.0.2.10 2001:db8:0:1::10"},
		// Flannel: an IPv6 --iface address gives way to the holder of --public-ipv6.
		{"iface v6 address gives way to public ipv6, dual", Spec{Ifaces: []string{"fd00:1::5"}, PublicIPv6: ip("2001:db8:0:1::10")}, DualStack, "eth0 192.0.2.10 2001:db8:0:1::10 public 192.0.2.10 2001:db8:0:1::10"},
		{"iface v6 address, dual", Spec{Ifaces: []string{"fd00:1::5"}}, DualStack, "eth1 10.0.0.5 fd00:1::5 public 10.0.0.5 fd00:1::5"},
		{"iface name with a zone is a name", Spec{Ifaces: []string{"fe80::a%eth0", "eth1"}}, IPv6, "eth1 - fd00:1::5 public - fd00:1::5"},

		// --iface-regex: addresses first, then names.
		{"regex on address first", Spec{Regexes: []string{`^192\.0\.2\.11$`}}, IPv4, "eth0 192.0.2.11 - public 192.0.2.11 -"},
		{"regex on address before an earlier name", Spec{Regexes: []string{`^(lo|10\.0\.0\.5)$`}}, IPv4, "eth1 10.0.0.5 - public 10.0.0.5 -"},
		{"regex on name", Spec{Regexes: []string{`^eth1$`}}, IPv4, "eth1 10.0.0.5 - public 10.0.0.5 -"},
		{"regex list in order", Spec{Regexes: []string{`^bond`, `^eth`}}, IPv4, "eth0 192.0.2.10 - public 192.0.2.10 -"},
		{"bad regex falls through", Spec{Regexes: []string{"(", `^eth1$`}}, IPv4, "eth1 10.0.0.5 - public 10.0.0.5 -"},
		{"regex ignores deprecated addresses", Spec{Regexes: []string{`dead`, `aaaa`}}, IPv6, "eth2 - 2001:db8:2::aaaa public - 2001:db8:2::aaaa"},
		{"regex v6", Spec{Regexes: []string{`^fd00:`}}, IPv6, "eth1 - fd00:1::5 public - fd00:1::5"},
		{"regex dual needs both families", Spec{Regexes: []string{`^(10\.0\.0\.5|fd00:1::5)$`}}, DualStack, "eth1 10.0.0.5 fd00:1::5 public 10.0.0.5 fd00:1::5"},
		// 192.0.2.10 matches but no IPv6 address of eth0 does: the names are
		// tried, and eth0's name keeps its matching IPv4 address.
		{"regex dual v4 match only, then name", Spec{Regexes: []string{`^(192\.0\.2\.11|eth0)$`}}, DualStack, "eth0 192.0.2.11 2001:db8:0:1::10 public 192.0.2.11 2001:db8:0:1::10"},
		{"regex dual v4 match elsewhere, then name", Spec{Regexes: []string{`^(192\.0\.2\.11|eth1)$`}}, DualStack, "eth1 10.0.0.5 fd00:1::5 public 10.0.0.5 fd00:1::5"},

		// --iface-can-reach: the kernel's route and its source address.
		{"can reach", Spec{CanReach: ip("10.0.200.1")}, IPv4, "eth1 10.0.0.5 - public 10.0.0.5 -"},
		{"can reach takes the route's source", Spec{CanReach: ip("192.0.2.99")}, IPv4, "eth0 192.0.2.11 - public 192.0.2.11 -"},
		{"can reach v6", Spec{CanReach: ip("2001:db8::1")}, IPv6, "eth2 - 2001:db8:2::bbbb public - 2001:db8:2::bbbb"},
		{"can reach v6, dual: first IPv4", Spec{CanReach: ip("2001:db8::1")}, DualStack, "eth2 198.51.100.8 2001:db8:2::bbbb public 198.51.100.8 2001:db8:2::bbbb"},
		{"can reach v4 source ignored for v6", Spec{CanReach: ip("10.0.200.1")}, IPv6, "eth1 - fd00:1::5 public - fd00:1::5"},

		// Public addresses.
		{"public ip overrides", Spec{Ifaces: []string{"eth1"}, PublicIP: ip("203.0.113.7")}, IPv4, "eth1 10.0.0.5 - public 203.0.113.7 -"},
		{"public ipv6 kept with IPv4 only", Spec{Ifaces: []string{"eth1"}, PublicIPv6: ip("2001:db8::7")}, IPv4, "eth1 10.0.0.5 - public 10.0.0.5 2001:db8::7"},
		{"public ip kept with IPv6 only", Spec{Ifaces: []string{"eth1"}, PublicIP: ip("203.0.113.7")}, IPv6, "eth1 - fd00:1::5 public 203.0.113.7 fd00:1::5"},
		{"public ipv6 overrides, dual", Spec{Ifaces: []string{"eth1"}, PublicIPv6: ip("2001:db8::7")}, DualStack, "eth1 10.0.0.5 fd00:1::5 public 10.0.0.5 2001:db8::7"},

		// Address ranking.
		{"IPv4: permanent before dynamic", Spec{Ifaces: []string{"eth2"}}, IPv4, "eth2 198.51.100.8 - public 198.51.100.8 -"},
		{"IPv4: global before link-local, primary before secondary", Spec{Ifaces: []string{"eth0"}}, IPv4, "eth0 192.0.2.10 - public 192.0.2.10 -"},
		{"IPv4 link-local when nothing else", Spec{Ifaces: []string{"ll0"}}, IPv4, "ll0 169.254.9.9 - public 169.254.9.9 -"},
		{"IPv6 link-local when nothing else", Spec{Ifaces: []string{"ll0"}}, IPv6, "ll0 - fe80::9 public - fe80::9"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ext, err := Select(testHost(), tt.spec, tt.stack, nil)
			if err != nil {
				t.Fatal(err)
			}
			if got := describe(ext); got != tt.want {
				t.Errorf("got  %s\nwant %s", got, tt.want)
			}
		})
	}
}

func TestSelectResult(t *testing.T) {
	h := testHost()
	h.links[2].GSOIPv4MaxSize = 196608
	ext, err := Select(h, Spec{Ifaces: []string{"eth1"}}, DualStack, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := External{
		Name: "eth1", Index: 3, MTU: 9000,
		Addr: ip("10.0.0.5"), Addr6: ip("fd00:1::5"), PublicIP: ip("10.0.0.5"), PublicIPv6: ip("fd00:1::5"),
		Subnet: netip.MustParsePrefix("10.0.0.0/16"), Subnet6: netip.MustParsePrefix("fd00:1::/64"),
		GSOIPv4MaxSize: 196608,
	}
	if ext != want {
		t.Errorf("got  %+v\nwant %+v", ext, want)
	}
	// A route source that is no address of the interface has no on-link prefix.
	h.routes[ip("10.0.200.1")] = route{3, ip("10.3.3.3")}
	ext, err = Select(h, Spec{CanReach: ip("10.0.200.1")}, IPv4, nil)
	if err != nil || ext.Addr != ip("10.3.3.3") || ext.Subnet.IsValid() {
		t.Errorf("got %+v, %v; want Addr 10.3.3.3 without Subnet", ext, err)
	}
}

func TestSelectErrors(t *testing.T) {
	noDefault := testHost()
	noDefault.def4, noDefault.def6 = -1, -1
	split := testHost()
	split.def6 = 3
	blackhole := testHost()
	blackhole.def4 = 0
	tests := []struct {
		name  string
		h     host
		spec  Spec
		stack Stack
		want  string
	}{
		{"no default route", noDefault, Spec{}, IPv4, "no --iface, --iface-regex or --iface-can-reach given, so the default route's interface is used: no IPv4 default route"},
		{"no v6 default route", noDefault, Spec{}, IPv6, "no IPv6 default route"},
		{"default route without interface", blackhole, Spec{}, IPv4, "the IPv4 default route names no interface"},
		{"dual default routes differ", split, Spec{}, DualStack, "the IPv6 default route leaves by eth1, the IPv4 one by eth0: dual stack needs one interface for both"},
		{"default route interface without IPv6", testHost(), Spec{Ifaces: []string{"v4only"}}, IPv6, "--iface v4only: interface v4only has no usable IPv6 address (has: 10.8.0.1/24)"},
		{"public ip not local", testHost(), Spec{PublicIP: ip("203.0.113.9")}, IPv4, "so the interface holding --public-ip 203.0.113.9 is used: no interface has address 203.0.113.9 (lo [127.0.0.1/8 ::1/128], eth0 ["},
		{"public ipv6 alone with IPv4 only", testHost(), Spec{PublicIPv6: ip("fd00:1::5")}, IPv4, "--public-ipv6 fd00:1::5 is used: fd00:1::5 is an IPv6 address and only IPv4 is enabled"},
		{"public ips on two interfaces, dual", testHost(), Spec{PublicIP: ip("10.0.0.5"), PublicIPv6: ip("2001:db8:0:1::10")}, DualStack, "--public-ipv6 2001:db8:0:1::10 is on eth0, 10.0.0.5 on eth1: dual stack needs both on one interface"},
		{"public ipv6 not local, dual", testHost(), Spec{Ifaces: []string{"10.0.0.5"}, PublicIPv6: ip("2001:db8::7")}, DualStack, "--iface 10.0.0.5: --public-ipv6: no interface has address 2001:db8::7"},
		{"iface v4 address with IPv6 only", testHost(), Spec{Ifaces: []string{"10.0.0.5"}}, IPv6, "10.0.0.5 is an IPv4 address and only IPv6 is enabled"},
		{"everything tried is listed", testHost(), Spec{Ifaces: []string{"eth9", "10.9.9.9", "wg0"}, Regexes: []string{"^bond", "("}, CanReach: ip("198.51.100.1")}, IPv4,
			"no interface fits for IPv4: --iface eth9: no interface named eth9; --iface 10.9.9.9: no interface has address 10.9.9.9; " +
				"--iface wg0: interface wg0 has no usable IPv4 address (has: none); " +
				"--iface-regex ^bond: matches no usable address and no interface name; " +
				"--iface-regex (: not a regular expression: error parsing regexp: missing closing ): `(`; " +
				"--iface-can-reach 198.51.100.1: network is unreachable; " +
				"interfaces: lo [127.0.0.1/8 ::1/128], eth0 [fe80::a/64 169.254.3.3/16 192.0.2.10/24 192.0.2.11/24 2001:db8:0:1::10/64], eth1 [10.0.0.5/16 fd00:1::5/64], wg0 [], "},
		{"can reach unlisted interface", testHost(), Spec{CanReach: ip("10.99.0.1")}, IPv4, "the route to 10.99.0.1 leaves by interface #42, which is not listed"},
		{"can reach interface without address", testHost(), Spec{CanReach: ip("10.77.0.1")}, IPv4, "interface wg0 has no usable IPv4 address"},
		{"regex matches loopback name only, which has no usable address", testHost(), Spec{Regexes: []string{`^lo$`}}, IPv4, "interface lo has no usable IPv4 address (has: 127.0.0.1/8, ::1/128)"},
		{"no mtu", testHost(), Spec{Ifaces: []string{"nomtu"}}, IPv4, "interface nomtu: MTU 0 is not usable"},
		{"public ip v6", testHost(), Spec{PublicIP: ip("2001:db8::1")}, IPv4, "--public-ip 2001:db8::1: not an IPv4 address"},
		{"public ipv6 v4", testHost(), Spec{PublicIPv6: ip("192.0.2.1")}, IPv6, "--public-ipv6 192.0.2.1: not an IPv6 address"},
		{"no stack", testHost(), Spec{}, 0, "no address family"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ext, err := Select(tt.h, tt.spec, tt.stack, nil)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("got %s, err = %v\nwant it to contain %q", describe(ext), err, tt.want)
			}
		})
	}
}

// TestSelectLogsCandidates: each candidate that does not fit is logged
// before the next is tried.
func TestSelectLogsCandidates(t *testing.T) {
	var buf bytes.Buffer
	log := slog.New(slog.NewTextHandler(&buf, nil))
	ext, err := Select(testHost(), Spec{Ifaces: []string{"eth9", "wg0"}, Regexes: []string{`^eth1$`}}, IPv4, log)
	if err != nil || ext.Name != "eth1" {
		t.Fatalf("got %s, %v; want eth1", describe(ext), err)
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 ||
		!strings.Contains(lines[0], `candidate="--iface eth9"`) || !strings.Contains(lines[0], "no interface named eth9") ||
		!strings.Contains(lines[1], `candidate="--iface wg0"`) || !strings.Contains(lines[1], "no usable IPv4 address") {
		t.Errorf("log:\n%s", buf.String())
	}
}

func TestUsableOrder(t *testing.T) {
	h := testHost()
	got := usable(h.links[4], true)
	want := []netip.Addr{ip("2001:db8:2::cccc"), ip("2001:db8:2::bbbb"), ip("2001:db8:2::aaaa"), ip("fe80::2")}
	if len(got) != len(want) {
		t.Fatalf("got %v, want %v", got, want)
	}
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("got %v, want %v", got, want)
		}
	}
	// Equal rank keeps the kernel's order.
	l := Link{Addrs: []Addr{perm("10.1.0.2/24"), perm("10.1.0.1/24"), dyn("10.1.0.9/24"), perm("10.1.0.3/24")}}
	if got := usable(l, false); len(got) != 4 || got[0] != ip("10.1.0.2") || got[1] != ip("10.1.0.1") || got[2] != ip("10.1.0.3") || got[3] != ip("10.1.0.9") {
		t.Errorf("got %v", got)
	}
}

func TestStackOf(t *testing.T) {
	for _, tt := range []struct {
		v4, v6 bool
		want   Stack
	}{{true, false, IPv4}, {false, true, IPv6}, {true, true, DualStack}} {
		if got, err := StackOf(tt.v4, tt.v6); err != nil || got != tt.want {
			t.Errorf("StackOf(%v, %v) = %v, %v; want %v", tt.v4, tt.v6, got, err, tt.want)
		}
	}
	if _, err := StackOf(false, false); err == nil {
		t.Error("StackOf(false, false) succeeded")
	}
}
