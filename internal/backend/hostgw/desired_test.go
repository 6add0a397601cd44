package hostgw

import (
	"encoding/json"
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/weft-net/weft/internal/backend"
	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/netif"
	"github.com/weft-net/weft/internal/netlinkx"
)

var (
	pfx  = netip.MustParsePrefix
	addr = netip.MustParseAddr
)

func hgLease(subnet, pub string) lease.Lease {
	return lease.Lease{Subnet: pfx(subnet), Attrs: lease.Attrs{PublicIP: addr(pub), BackendType: "host-gw"}}
}

func TestDesired(t *testing.T) {
	p := Params{
		Network: pfx("10.244.0.0/16"), Own: pfx("10.244.1.0/24"), PublicIP: addr("192.0.2.1"),
		Underlay: 2, UnderlayName: "eth0", UnderlaySubnet: pfx("192.0.2.0/24"),
	}
	vx := lease.Lease{Subnet: pfx("10.244.6.0/24"), Attrs: lease.Attrs{
		PublicIP: addr("192.0.2.6"), BackendType: "vxlan", BackendData: json.RawMessage(`{"VNI":1,"VtepMAC":"02:00:00:00:00:06"}`)}}
	leases := []lease.Lease{
		hgLease("10.244.3.0/24", "192.0.2.3"),
		hgLease("10.244.1.0/24", "192.0.2.1"), // own
		hgLease("10.244.2.0/24", "192.0.2.2"),
		hgLease("10.244.4.0/24", "203.0.113.9"), // another segment
		hgLease("10.244.5.0/24", "192.0.2.1"),   // our IP
		vx,
		hgLease("10.9.0.0/24", "192.0.2.9"),
		{Subnet: pfx("10.244.7.0/24"), Attrs: lease.Attrs{BackendType: "host-gw"}},
	}
	routes, skipped := Desired(p, leases)
	want := []netlinkx.Route{
		{Dst: pfx("10.244.2.0/24"), Gw: addr("192.0.2.2"), LinkIndex: 2},
		{Dst: pfx("10.244.3.0/24"), Gw: addr("192.0.2.3"), LinkIndex: 2},
	}
	if !slices.Equal(routes, want) {
		t.Errorf("routes = %v, want %v", routes, want)
	}
	wantSkip := []string{
		"lease 10.9.0.0/24: subnet is not inside the cluster network 10.244.0.0/16",
		"lease 10.244.4.0/24: host-gw needs nodes on one L2 segment: 203.0.113.9 is not on eth0's 192.0.2.0/24; use vxlan or DirectRouting",
		"lease 10.244.5.0/24: PublicIP 192.0.2.1 is this node's own",
		`lease 10.244.6.0/24: backend type "vxlan", not "host-gw"`,
		"lease 10.244.7.0/24: PublicIP invalid IP is not a usable IPv4 address",
	}
	if len(skipped) != len(wantSkip) {
		t.Fatalf("skipped %v, want %d", skipped, len(wantSkip))
	}
	for i, w := range wantSkip {
		if !strings.HasPrefix(skipped[i].Error(), w) {
			t.Errorf("skipped[%d] = %q, want prefix %q", i, skipped[i], w)
		}
		if got, want := errors.Is(skipped[i], ErrNotAdjacent), strings.Contains(w, "L2 segment"); got != want {
			t.Errorf("skipped[%d] Is(ErrNotAdjacent) = %v", i, got)
		}
	}

	// Underlay prefix unknown: no adjacency check, the kernel decides.
	p.UnderlaySubnet = netip.Prefix{}
	routes, skipped = Desired(p, leases[:4])
	if len(routes) != 3 || len(skipped) != 0 {
		t.Errorf("without underlay subnet: routes %v skipped %v", routes, skipped)
	}
}

// The IPv6 half of the leases, by the same rules: <IPv6Subnet> via
// <PublicIPv6>, refusing a peer off the underlay's IPv6 prefix.
func TestDesiredIPv6(t *testing.T) {
	p := Params{
		IPv6: true, Network: pfx("fd00:10:244::/56"), Own: pfx("fd00:10:244:1::/64"), PublicIP: addr("2001:db8::1"),
		Underlay: 2, UnderlayName: "eth0", UnderlaySubnet: pfx("2001:db8::/64"),
	}
	dual := func(sn, sn6, pub, pub6 string) lease.Lease {
		l := hgLease(sn, pub)
		l.IPv6Subnet = pfx(sn6)
		if pub6 != "" {
			a := addr(pub6)
			l.Attrs.PublicIPv6 = &a
		}
		return l
	}
	leases := []lease.Lease{
		dual("10.244.3.0/24", "fd00:10:244:3::/64", "192.0.2.3", "2001:db8::3"),
		dual("10.244.1.0/24", "fd00:10:244:1::/64", "192.0.2.1", "2001:db8::1"), // own
		dual("10.244.2.0/24", "fd00:10:244:2::/64", "192.0.2.2", "2001:db8::2"),
		hgLease("10.244.8.0/24", "192.0.2.8"),                                      // IPv4 only: nothing to route
		dual("10.244.4.0/24", "fd00:10:244:4::/64", "192.0.2.4", "2001:db8:ff::4"), // another segment
		dual("10.244.5.0/24", "fd00:10:244:5::/64", "192.0.2.5", ""),               // no PublicIPv6
		dual("10.244.6.0/24", "fd00:10:244:6::/64", "192.0.2.6", "2001:db8::1"),    // our IPv6
	}
	routes, skipped := Desired(p, leases)
	want := []netlinkx.Route{
		{Dst: pfx("fd00:10:244:2::/64"), Gw: addr("2001:db8::2"), LinkIndex: 2},
		{Dst: pfx("fd00:10:244:3::/64"), Gw: addr("2001:db8::3"), LinkIndex: 2},
	}
	if !slices.Equal(routes, want) {
		t.Errorf("routes = %v, want %v", routes, want)
	}
	wantSkip := []string{
		"lease fd00:10:244:4::/64: host-gw needs nodes on one L2 segment: 2001:db8:ff::4 is not on eth0's 2001:db8::/64",
		"lease fd00:10:244:5::/64: PublicIPv6 invalid IP is not a usable IPv6 address",
		"lease fd00:10:244:6::/64: PublicIPv6 2001:db8::1 is this node's own",
	}
	if len(skipped) != len(wantSkip) {
		t.Fatalf("skipped %v, want %d", skipped, len(wantSkip))
	}
	for i, w := range wantSkip {
		if !strings.HasPrefix(skipped[i].Error(), w) {
			t.Errorf("skipped[%d] = %q, want prefix %q", i, skipped[i], w)
		}
	}
	if !errors.Is(skipped[0], ErrNotAdjacent) {
		t.Errorf("off-segment IPv6 peer: %v does not wrap ErrNotAdjacent", skipped[0])
	}
}

func TestPodLinkFollowsUnderlayBigTCP(t *testing.T) {
	for _, tc := range []struct {
		underlay, want int
	}{
		{0, 0},     // kernel does not report it
		{65536, 0}, // the default: pods keep theirs
		{196608, 196608},
	} {
		got := podLink(netif.External{GSOIPv4MaxSize: tc.underlay}, 1500)
		if got != (backend.PodLink{MTU: 1500, GSOIPv4MaxSize: tc.want}) {
			t.Errorf("underlay gso_ipv4_max_size %d: got %+v, want MTU 1500 and %d", tc.underlay, got, tc.want)
		}
	}
}
