package netif

import (
	"net/netip"
	"strconv"
	"strings"
	"testing"

	"github.com/weft-net/weft/internal/netlinkx"
	"github.com/weft-net/weft/internal/netlinkx/nstest"
)

// TestSelectOnKernel reads a real namespace: two veth links, a default
// route by one and a more specific route by the other.
func TestSelectOnKernel(t *testing.T) {
	a, b := nstest.New(t), nstest.New(t)
	ethA, _ := nstest.Veth(t, a, "ext0", netip.MustParsePrefix("192.0.2.10/24"), b, "p0", netip.MustParsePrefix("192.0.2.1/24"))
	int1, _ := nstest.Veth(t, a, "int1", netip.MustParsePrefix("10.9.0.5/16"), b, "p1", netip.MustParsePrefix("10.9.0.1/16"))
	if err := a.H.LinkSetMTU(int1, 9000); err != nil {
		t.Fatal(err)
	}
	route := func(r netlinkx.Route) {
		if err := a.H.RouteReplace(r); err != nil {
			t.Fatal(err)
		}
	}
	// No default route yet: the error says what to do.
	if _, err := SelectOn(a.H, Spec{}); err == nil || !strings.Contains(err.Error(), "no IPv4 default route") {
		t.Fatalf("without a default route: err = %v", err)
	}
	route(netlinkx.Route{Dst: netip.MustParsePrefix("0.0.0.0/0"), Gw: netip.MustParseAddr("192.0.2.1"), LinkIndex: ethA.Attrs().Index})
	route(netlinkx.Route{Dst: netip.MustParsePrefix("198.51.100.0/24"), Gw: netip.MustParseAddr("10.9.0.1"), LinkIndex: int1.Attrs().Index})

	tests := []struct {
		spec Spec
		want string
	}{
		{Spec{}, "ext0 192.0.2.10 192.0.2.0/24 1500"},
		{Spec{Ifaces: []string{"int1"}}, "int1 10.9.0.5 10.9.0.0/16 9000"},
		{Spec{Ifaces: []string{"10.9.0.5"}}, "int1 10.9.0.5 10.9.0.0/16 9000"},
		{Spec{Regexes: []string{`^int`}}, "int1 10.9.0.5 10.9.0.0/16 9000"},
		{Spec{CanReach: netip.MustParseAddr("198.51.100.7")}, "int1 10.9.0.5 10.9.0.0/16 9000"},
		{Spec{CanReach: netip.MustParseAddr("203.0.113.1")}, "ext0 192.0.2.10 192.0.2.0/24 1500"},
	}
	for _, tt := range tests {
		ext, err := SelectOn(a.H, tt.spec)
		if err != nil {
			t.Errorf("%+v: %v", tt.spec, err)
			continue
		}
		got := strings.Join([]string{ext.Name, ext.Addr.String(), ext.Subnet.String(), strconv.Itoa(ext.MTU)}, " ")
		if got != tt.want {
			t.Errorf("%+v: got %s, want %s", tt.spec, got, tt.want)
		}
		if l := a.Link(t, ext.Name); l.Attrs().Index != ext.Index {
			t.Errorf("%s: index %d, kernel says %d", ext.Name, ext.Index, l.Attrs().Index)
		}
	}
	_, err := SelectOn(a.H, Spec{Regexes: []string{"^eth9$"}})
	if err == nil || !strings.Contains(err.Error(), "no interface matches --iface-regex ^eth9$; interfaces: lo, ext0, int1") {
		t.Errorf("err = %v", err)
	}
}
