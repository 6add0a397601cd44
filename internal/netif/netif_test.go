package netif

import (
	"errors"
	"net/netip"
	"strconv"
	"strings"
	"testing"
)

// host is a snapshot of a host, as the Linux reader would return it.
type host struct {
	links    []Link
	routes   map[netip.Addr]int // RouteTo answers
	src      netip.Addr
	defIndex int
}

func (h host) Links() ([]Link, error) { return h.links, nil }

func (h host) RouteTo(dst netip.Addr) (int, netip.Addr, error) {
	idx, ok := h.routes[dst]
	if !ok {
		return 0, netip.Addr{}, errors.New("network is unreachable")
	}
	return idx, h.src, nil
}

func (h host) DefaultRoute() (int, error) {
	if h.defIndex == 0 {
		return 0, ErrNoDefaultRoute
	}
	return h.defIndex, nil
}

func pfx(s ...string) []netip.Prefix {
	out := make([]netip.Prefix, len(s))
	for i, x := range s {
		out[i] = netip.MustParsePrefix(x)
	}
	return out
}

var ip = netip.MustParseAddr

func testHost() host {
	return host{
		links: []Link{
			{Name: "lo", Index: 1, MTU: 65536, Addrs: pfx("127.0.0.1/8", "::1/128")},
			{Name: "eth0", Index: 2, MTU: 1500, Addrs: pfx("fe80::1/64", "169.254.3.3/16", "192.0.2.10/24", "192.0.2.11/24")},
			{Name: "eth1", Index: 3, MTU: 9000, Addrs: pfx("10.0.0.5/16")},
			{Name: "wg0", Index: 4, MTU: 1420},
		},
		routes:   map[netip.Addr]int{ip("10.0.200.1"): 3},
		defIndex: 2,
	}
}

func TestSelect(t *testing.T) {
	tests := []struct {
		name string
		spec Spec
		want string // name addr public subnet mtu
	}{
		{"default route", Spec{}, "eth0 192.0.2.10 192.0.2.10 192.0.2.0/24 1500"},
		{"iface by name", Spec{Ifaces: []string{"eth1"}}, "eth1 10.0.0.5 10.0.0.5 10.0.0.0/16 9000"},
		{"iface by address picks that address", Spec{Ifaces: []string{"192.0.2.11"}}, "eth0 192.0.2.11 192.0.2.11 192.0.2.0/24 1500"},
		{"iface list in order, first missing", Spec{Ifaces: []string{"eth9", "10.0.0.5", "eth0"}}, "eth1 10.0.0.5 10.0.0.5 10.0.0.0/16 9000"},
		{"regex on address first", Spec{Regexes: []string{`^192\.0\.2\.11$`}}, "eth0 192.0.2.11 192.0.2.11 192.0.2.0/24 1500"},
		{"regex on name", Spec{Regexes: []string{`^eth1$`}}, "eth1 10.0.0.5 10.0.0.5 10.0.0.0/16 9000"},
		{"regex list in order", Spec{Regexes: []string{`^bond`, `^eth`}}, "eth0 192.0.2.10 192.0.2.10 192.0.2.0/24 1500"},
		{"can reach", Spec{CanReach: ip("10.0.200.1")}, "eth1 10.0.0.5 10.0.0.5 10.0.0.0/16 9000"},
		{"public ip", Spec{Ifaces: []string{"eth1"}, PublicIP: ip("203.0.113.7")}, "eth1 10.0.0.5 203.0.113.7 10.0.0.0/16 9000"},
		{"iface wins over regex", Spec{Ifaces: []string{"eth1"}, Regexes: []string{"eth0"}}, "eth1 10.0.0.5 10.0.0.5 10.0.0.0/16 9000"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ext, err := Select(testHost(), tt.spec)
			if err != nil {
				t.Fatal(err)
			}
			got := strings.Join([]string{ext.Name, ext.Addr.String(), ext.PublicIP.String(), ext.Subnet.String(), strconv.Itoa(ext.MTU)}, " ")
			if got != tt.want {
				t.Errorf("got  %s\nwant %s", got, tt.want)
			}
		})
	}
}

func TestCanReachSourceAddress(t *testing.T) {
	h := testHost()
	h.routes[ip("192.0.2.99")] = 2
	h.src = ip("192.0.2.11")
	ext, err := Select(h, Spec{CanReach: ip("192.0.2.99")})
	if err != nil {
		t.Fatal(err)
	}
	if ext.Name != "eth0" || ext.Addr != ip("192.0.2.11") {
		t.Errorf("got %s %s, want eth0 with the route's source 192.0.2.11", ext.Name, ext.Addr)
	}
}

func TestSelectErrors(t *testing.T) {
	h := testHost()
	tests := []struct {
		name string
		h    host
		spec Spec
		want string
	}{
		{"regex matches nothing", h, Spec{Regexes: []string{"^eth9$"}}, "no interface matches --iface-regex ^eth9$; interfaces: lo, eth0, eth1, wg0"},
		{"bad regex", h, Spec{Regexes: []string{"("}}, "--iface-regex (: error parsing regexp"},
		{"iface missing", h, Spec{Ifaces: []string{"eth9", "10.9.9.9"}}, "no interface matches --iface eth9, 10.9.9.9 (no interface named eth9; no interface has address 10.9.9.9); interfaces: lo, eth0, eth1, wg0"},
		{"no ipv4 address", h, Spec{Ifaces: []string{"wg0"}}, "interface wg0 has no usable IPv4 address (has: none)"},
		{"loopback only", h, Spec{Ifaces: []string{"lo"}}, "interface lo has no usable IPv4 address (has: 127.0.0.1/8, ::1/128)"},
		{"unreachable", h, Spec{CanReach: ip("198.51.100.1")}, "--iface-can-reach 198.51.100.1: network is unreachable"},
		{"no default route", host{links: h.links}, Spec{}, "no default route to take the interface from: no IPv4 default route"},
		{"public ip v6", h, Spec{PublicIP: ip("2001:db8::1")}, "--public-ip 2001:db8::1: not an IPv4 address"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Select(tt.h, tt.spec)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("err = %v, want it to contain %q", err, tt.want)
			}
		})
	}
}
