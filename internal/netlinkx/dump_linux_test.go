package netlinkx

import (
	"encoding/binary"
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"
)

// Golden messages as the kernel sends them in a dump (x86-64, little
// endian): struct rtmsg or ndmsg, then the attributes, each 4-aligned.

// attr is one struct rtattr with value v, padded.
func attr(typ uint16, v ...byte) []byte {
	b := binary.LittleEndian.AppendUint16(nil, uint16(unix.SizeofRtAttr+len(v)))
	b = binary.LittleEndian.AppendUint16(b, typ)
	b = append(b, v...)
	for len(b)%unix.RTA_ALIGNTO != 0 {
		b = append(b, 0)
	}
	return b
}

func u32(v uint32) []byte { return binary.LittleEndian.AppendUint32(nil, v) }

// rtmsg is struct rtmsg: family, dst_len, src_len, tos, table, protocol,
// scope, type, flags; then attrs.
func rtmsg(family, dstLen, table, typ uint8, flags uint32, attrs ...[]byte) []byte {
	b := []byte{family, dstLen, 0, 0, table, unix.RTPROT_BOOT, unix.RT_SCOPE_UNIVERSE, typ}
	b = append(b, u32(flags)...)
	for _, a := range attrs {
		b = append(b, a...)
	}
	return b
}

func TestDecodeRoute(t *testing.T) {
	v6 := netip.MustParseAddr("fd00:200::5").As16()
	v6dst := netip.MustParseAddr("fd00:100:5::").As16()
	main, all := RouteFilter{}, RouteFilter{Table: TableAll}
	for _, tc := range []struct {
		name string
		m    []byte
		f    RouteFilter
		want Route
		ok   bool
	}{
		{"vxlan onlink", rtmsg(unix.AF_INET, 24, unix.RT_TABLE_MAIN, unix.RTN_UNICAST, unix.RTNH_F_ONLINK,
			attr(unix.RTA_TABLE, u32(unix.RT_TABLE_MAIN)...), attr(unix.RTA_DST, 10, 244, 5, 0),
			attr(unix.RTA_GATEWAY, 10, 244, 5, 0), attr(unix.RTA_OIF, u32(7)...)),
			RouteFilter{Family: FamilyV4, LinkIndex: 7},
			Route{Dst: netip.MustParsePrefix("10.244.5.0/24"), Gw: netip.MustParseAddr("10.244.5.0"), LinkIndex: 7, OnLink: true}, true},
		{"IPv6 metric 1024 reads as 0", rtmsg(unix.AF_INET6, 64, unix.RT_TABLE_MAIN, unix.RTN_UNICAST, 0,
			attr(unix.RTA_DST, v6dst[:]...), attr(unix.RTA_PRIORITY, u32(1024)...), attr(unix.RTA_GATEWAY, v6[:]...), attr(unix.RTA_OIF, u32(3)...)),
			RouteFilter{Family: FamilyV6},
			Route{Dst: netip.MustParsePrefix("fd00:100:5::/64"), Gw: netip.MustParseAddr("fd00:200::5"), LinkIndex: 3}, true},
		{"default route, metric kept", rtmsg(unix.AF_INET, 0, unix.RT_TABLE_MAIN, unix.RTN_UNICAST, 0,
			attr(unix.RTA_PRIORITY, u32(100)...), attr(unix.RTA_GATEWAY, 192, 0, 2, 1), attr(unix.RTA_OIF, u32(2)...)),
			main, Route{Dst: netip.MustParsePrefix("0.0.0.0/0"), Gw: netip.MustParseAddr("192.0.2.1"), LinkIndex: 2, Priority: 100}, true},
		{"table past 255, asked for", rtmsg(unix.AF_INET, 24, unix.RT_TABLE_COMPAT, unix.RTN_UNICAST, 0,
			attr(unix.RTA_TABLE, u32(1000)...), attr(unix.RTA_DST, 10, 0, 0, 0), attr(unix.RTA_OIF, u32(2)...)),
			RouteFilter{Table: 1000}, Route{Dst: netip.MustParsePrefix("10.0.0.0/24"), LinkIndex: 2, Table: 1000}, true},
		{"table past 255, all tables", rtmsg(unix.AF_INET, 24, unix.RT_TABLE_COMPAT, unix.RTN_UNICAST, 0,
			attr(unix.RTA_TABLE, u32(1000)...), attr(unix.RTA_DST, 10, 0, 0, 0), attr(unix.RTA_OIF, u32(2)...)),
			all, Route{Dst: netip.MustParsePrefix("10.0.0.0/24"), LinkIndex: 2, Table: 1000}, true},
		{"table past 255, main asked", rtmsg(unix.AF_INET, 24, unix.RT_TABLE_COMPAT, unix.RTN_UNICAST, 0,
			attr(unix.RTA_TABLE, u32(1000)...), attr(unix.RTA_DST, 10, 0, 0, 0)), main, Route{}, false},
		{"another table asked", rtmsg(unix.AF_INET, 24, unix.RT_TABLE_MAIN, unix.RTN_UNICAST, 0,
			attr(unix.RTA_DST, 10, 0, 0, 0)), RouteFilter{Table: 1000}, Route{}, false},
		{"local table", rtmsg(unix.AF_INET, 32, unix.RT_TABLE_LOCAL, unix.RTN_LOCAL, 0,
			attr(unix.RTA_DST, 127, 0, 0, 1)), main, Route{}, false},
		{"another link", rtmsg(unix.AF_INET, 24, unix.RT_TABLE_MAIN, unix.RTN_UNICAST, 0,
			attr(unix.RTA_DST, 10, 0, 0, 0), attr(unix.RTA_OIF, u32(8)...)), RouteFilter{LinkIndex: 7}, Route{}, false},
		{"another family", rtmsg(unix.AF_INET6, 64, unix.RT_TABLE_MAIN, unix.RTN_UNICAST, 0,
			attr(unix.RTA_DST, v6dst[:]...)), RouteFilter{Family: FamilyV4}, Route{}, false},
		{"cloned", rtmsg(unix.AF_INET6, 128, unix.RT_TABLE_MAIN, unix.RTN_UNICAST, unix.RTM_F_CLONED,
			attr(unix.RTA_DST, v6dst[:]...)), main, Route{}, false},
		{"blackhole", rtmsg(unix.AF_INET, 24, unix.RT_TABLE_MAIN, unix.RTN_BLACKHOLE, 0,
			attr(unix.RTA_DST, 10, 0, 0, 0)), main, Route{}, false},
		{"multipath", rtmsg(unix.AF_INET, 24, unix.RT_TABLE_MAIN, unix.RTN_UNICAST, 0,
			attr(unix.RTA_DST, 10, 0, 0, 0), attr(unix.RTA_MULTIPATH|unix.NLA_F_NESTED, 8, 0, 0, 0, 0, 0, 0, 0)), main, Route{}, false},
		{"bad prefix length", rtmsg(unix.AF_INET, 33, unix.RT_TABLE_MAIN, unix.RTN_UNICAST, 0,
			attr(unix.RTA_DST, 10, 0, 0, 0)), main, Route{}, false},
		{"short", []byte{unix.AF_INET, 24, 0}, main, Route{}, false},
	} {
		got, ok := decodeRoute(tc.m, tc.f)
		if ok != tc.ok || got != tc.want {
			t.Errorf("%s: got %+v, %v; want %+v, %v", tc.name, got, ok, tc.want, tc.ok)
		}
	}
}

// A malformed attribute ends the attributes, not the process.
func TestEachAttrMalformed(t *testing.T) {
	good := attr(unix.RTA_OIF, u32(7)...)
	for _, b := range [][]byte{
		append(good, 0xff, 0xff, 1, 0),          // length past the end
		append(good, 2, 0, 1, 0),                // length below the header
		append(good, attr(unix.RTA_DST)[:3]...), // cut short
	} {
		var seen []uint16
		eachAttr(b, func(typ uint16, v []byte) { seen = append(seen, typ) })
		if len(seen) != 1 || seen[0] != unix.RTA_OIF {
			t.Errorf("%x: attributes %v, want just RTA_OIF", b, seen)
		}
	}
}

func TestDecodeNeigh(t *testing.T) {
	// A vxlan FDB entry (AF_BRIDGE) on link 7: MAC and remote VTEP.
	fdb := []byte{unix.AF_BRIDGE, 0, 0, 0, 7, 0, 0, 0, 0x80, 0, unix.NTF_SELF, 0}
	fdb = append(fdb, attr(unix.NDA_LLADDR, 0xc6, 0xd2, 0x32, 0x6f, 0x8f, 0x44)...)
	fdb = append(fdb, attr(unix.NDA_DST, 192, 0, 2, 5)...)
	e, ok := decodeNeigh(fdb)
	if !ok || e.family != unix.AF_BRIDGE || e.linkIndex != 7 || e.state != NUDPermanent ||
		e.ip != netip.MustParseAddr("192.0.2.5") || e.mac().String() != "c6:d2:32:6f:8f:44" {
		t.Errorf("fdb entry: %+v, %v", e, ok)
	}
	// An incomplete IPv6 neighbour: no link-layer address.
	v6 := netip.MustParseAddr("fd00:100:5::").As16()
	incomplete := append([]byte{unix.AF_INET6, 0, 0, 0, 3, 0, 0, 0, 0x01, 0, 0, 0}, attr(unix.NDA_DST, v6[:]...)...)
	if e, ok := decodeNeigh(incomplete); !ok || e.family != unix.AF_INET6 || e.linkIndex != 3 ||
		e.ip != netip.MustParseAddr("fd00:100:5::") || !e.mac().IsZero() {
		t.Errorf("incomplete neighbour: %+v, %v", e, ok)
	}
	if _, ok := decodeNeigh(fdb[:8]); ok {
		t.Error("a cut ndmsg decoded")
	}
}

// Whatever the kernel (or a bug) hands over, decoding never panics.
func FuzzDecodeDump(f *testing.F) {
	f.Add(rtmsg(unix.AF_INET, 24, unix.RT_TABLE_MAIN, unix.RTN_UNICAST, 0, attr(unix.RTA_DST, 10, 0, 0, 0), attr(unix.RTA_OIF, u32(7)...)))
	f.Add([]byte{unix.AF_BRIDGE, 0, 0, 0, 7, 0, 0, 0, 0x80, 0, 0, 0, 8, 0, 1, 0, 1, 2, 3, 4})
	f.Fuzz(func(t *testing.T, m []byte) {
		decodeRoute(m, RouteFilter{})
		decodeRoute(m, RouteFilter{Table: TableAll, LinkIndex: 7})
		if e, ok := decodeNeigh(m); ok {
			e.mac()
		}
	})
}
