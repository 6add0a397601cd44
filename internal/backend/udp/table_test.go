package udp

import (
	"errors"
	"net/netip"
	"testing"

	"golang.zx2c4.com/wireguard/conn"

	"github.com/weft-net/weft/internal/lease"
)

func mkLease(subnet, public, typ string) lease.Lease {
	return lease.Lease{
		Subnet: netip.MustParsePrefix(subnet),
		Attrs:  lease.Attrs{PublicIP: netip.MustParseAddr(public), BackendType: typ},
	}
}

func stdEP(a netip.AddrPort) (conn.Endpoint, error) {
	return &conn.StdNetEndpoint{AddrPort: a}, nil
}

func ip(s string) uint32 { return addrUint32(netip.MustParseAddr(s)) }

func TestBuildTable(t *testing.T) {
	own := netip.MustParsePrefix("10.244.1.0/24")
	leases := []lease.Lease{
		mkLease("10.244.1.0/24", "192.0.2.1", ""), // own
		mkLease("10.244.2.0/24", "192.0.2.2", ""), // flannel udp: no BackendType
		mkLease("10.244.3.0/24", "192.0.2.3", "udp"),
		mkLease("10.244.4.0/24", "192.0.2.4", "vxlan"),
		mkLease("10.244.5.0/24", "0.0.0.0", ""),
		mkLease("10.244.1.128/25", "192.0.2.6", ""), // overlaps own
		{IPv6Subnet: netip.MustParsePrefix("fd00::/64"), Attrs: lease.Attrs{PublicIP: netip.MustParseAddr("192.0.2.7")}},
		mkLease("10.244.6.0/26", "192.0.2.8", ""), // another length: config changed under a running node
	}
	tb, skip := buildTable(own, leases, 8285, stdEP)

	if len(tb.peers) != 3 {
		t.Fatalf("peers = %d, want 3 (%v)", len(tb.peers), tb.peers)
	}
	if len(skip) != 3 {
		t.Fatalf("skipped = %v, want vxlan, 0.0.0.0 and the overlap", skip)
	}
	for _, tc := range []struct {
		dst  string
		want string // peer endpoint, "" for none
	}{
		{"10.244.2.77", "192.0.2.2:8285"},
		{"10.244.3.1", "192.0.2.3:8285"},
		{"10.244.4.1", ""},
		{"10.244.1.5", ""}, // own subnet is not a peer
		{"10.244.6.63", "192.0.2.8:8285"},
		{"10.244.6.64", ""},
		{"10.245.2.1", ""},
	} {
		p := tb.lookup(ip(tc.dst))
		got := ""
		if p != nil {
			got = p.endpoint.String()
			if p.ep.DstToString() != got {
				t.Errorf("%s: endpoint %s, bind endpoint %s", tc.dst, got, p.ep.DstToString())
			}
		}
		if got != tc.want {
			t.Errorf("lookup(%s) = %q, want %q", tc.dst, got, tc.want)
		}
	}
	if !tb.isSender(netip.MustParseAddrPort("192.0.2.2:8285")) {
		t.Error("lease holder is not a sender")
	}
	for _, s := range []string{"192.0.2.2:9999", "192.0.2.4:8285", "192.0.2.1:8285", "198.51.100.1:8285"} {
		if tb.isSender(netip.MustParseAddrPort(s)) {
			t.Errorf("%s accepted as sender", s)
		}
	}
	if !tb.ownHas(ip("10.244.1.255")) || tb.ownHas(ip("10.244.2.1")) {
		t.Error("ownHas wrong")
	}
}

func TestTableLongestPrefix(t *testing.T) {
	tb, skip := buildTable(netip.MustParsePrefix("10.0.0.0/24"), []lease.Lease{
		mkLease("10.1.0.0/16", "192.0.2.2", ""),
		mkLease("10.1.5.0/24", "192.0.2.3", ""),
	}, 8285, stdEP)
	if len(skip) != 0 {
		t.Fatal(skip)
	}
	if p := tb.lookup(ip("10.1.5.9")); p == nil || p.endpoint.Addr().String() != "192.0.2.3" {
		t.Fatalf("10.1.5.9 -> %v, want the /24", p)
	}
	if p := tb.lookup(ip("10.1.6.9")); p == nil || p.endpoint.Addr().String() != "192.0.2.2" {
		t.Fatalf("10.1.6.9 -> %v, want the /16", p)
	}
}

func TestTableEdgeCases(t *testing.T) {
	// Before Configure nothing is ours and nothing routes.
	var empty table
	if empty.lookup(ip("10.0.0.1")) != nil || empty.ownHas(0) || empty.isSender(netip.AddrPort{}) {
		t.Fatal("zero table routes something")
	}
	// A lease whose endpoint the bind refuses is skipped, not fatal.
	tb, skip := buildTable(netip.Prefix{}, []lease.Lease{mkLease("10.1.0.0/24", "192.0.2.2", "")}, 8285,
		func(netip.AddrPort) (conn.Endpoint, error) { return nil, errors.New("no") })
	if len(tb.peers) != 0 || len(skip) != 1 {
		t.Fatalf("peers %v skipped %v", tb.peers, skip)
	}
	// Duplicates keep the first.
	tb, skip = buildTable(netip.Prefix{}, []lease.Lease{
		mkLease("10.1.0.0/24", "192.0.2.2", ""), mkLease("10.1.0.0/24", "192.0.2.3", ""),
	}, 8285, stdEP)
	if len(tb.peers) != 1 || len(skip) != 1 || tb.peers[0].endpoint.Addr().String() != "192.0.2.2" {
		t.Fatalf("peers %v skipped %v", tb.peers, skip)
	}
}

func TestTableSameAs(t *testing.T) {
	own := netip.MustParsePrefix("10.244.1.0/24")
	a, _ := buildTable(own, []lease.Lease{mkLease("10.244.2.0/24", "192.0.2.2", ""), mkLease("10.244.3.0/24", "192.0.2.3", "")}, 8285, stdEP)
	b, _ := buildTable(own, []lease.Lease{mkLease("10.244.3.0/24", "192.0.2.3", ""), mkLease("10.244.2.0/24", "192.0.2.2", "")}, 8285, stdEP)
	c, _ := buildTable(own, []lease.Lease{mkLease("10.244.2.0/24", "192.0.2.9", "")}, 8285, stdEP)
	if !a.sameAs(b) {
		t.Error("order matters")
	}
	if a.sameAs(c) {
		t.Error("different tables are the same")
	}
}

func BenchmarkLookup(b *testing.B) {
	var leases []lease.Lease
	for i := range 200 {
		leases = append(leases, lease.Lease{
			Subnet: netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, byte(i), 0}), 24),
			Attrs:  lease.Attrs{PublicIP: netip.AddrFrom4([4]byte{192, 0, 2, byte(i)})},
		})
	}
	tb, _ := buildTable(netip.MustParsePrefix("10.245.0.0/24"), leases, 8285, stdEP)
	dst := ip("10.244.77.5")
	for b.Loop() {
		if tb.lookup(dst) == nil {
			b.Fatal("miss")
		}
	}
}
