package cni

import (
	"net"
	"net/netip"
	"strings"
	"testing"

	current "github.com/containernetworking/cni/pkg/types/100"
)

func TestExpectFromResult(t *testing.T) {
	two, one := 2, 1
	_, v4, _ := net.ParseCIDR("10.244.1.5/24")
	v4.IP = net.ParseIP("10.244.1.5")
	_, other, _ := net.ParseCIDR("10.99.0.1/16")
	res := &current.Result{
		Interfaces: []*current.Interface{{Name: "cni0"}, {Name: "veth1"}, {Name: "eth0", Sandbox: "/var/run/netns/p"}},
		IPs:        []*current.IPConfig{{Interface: &two, Address: *v4}, {Interface: &one, Address: *other}, {Address: *other}},
	}
	got := expectFromResult(res, "eth0")
	if len(got) != 1 || got[0] != netip.MustParsePrefix("10.244.1.5/24") {
		t.Errorf("got %v, want [10.244.1.5/24]", got)
	}
}

func TestCompare(t *testing.T) {
	want := podExpect{
		IfName: "eth0", MTU: 1450,
		Addrs:  []netip.Prefix{netip.MustParsePrefix("10.244.1.5/24")},
		Routes: []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")},
	}
	good := podLink{Found: true, Up: true, MTU: 1450,
		Addrs:  []netip.Prefix{netip.MustParsePrefix("fe80::1/64"), netip.MustParsePrefix("10.244.1.5/24")},
		Routes: []netip.Prefix{netip.MustParsePrefix("10.244.1.0/24"), netip.MustParsePrefix("10.244.0.0/16")},
	}
	if err := want.compare("/ns", good); err != nil {
		t.Errorf("good pod: %v", err)
	}
	bad := podLink{Found: true, MTU: 1500, Routes: good.Routes[:1]}
	err := want.compare("/ns", bad)
	for _, s := range []string{"interface is down", "MTU is 1500, want 1450", "address 10.244.1.5/24 missing", "route to 10.244.0.0/16 missing", "eth0", "/ns"} {
		if err == nil || !strings.Contains(err.Error(), s) {
			t.Errorf("bad pod: error %v does not say %q", err, s)
		}
	}
	if err := want.compare("/ns", podLink{}); err == nil || !strings.Contains(err.Error(), "eth0 not found") {
		t.Errorf("missing interface: %v", err)
	}
}
