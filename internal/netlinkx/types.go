// Package netlinkx is weft's one door to the kernel's routing netlink: a
// Handle per network namespace, with dumps retried when the kernel
// interrupts them, and plain comparable values (net/netip, MAC) for the
// routes, neighbours and FDB entries the backends compute and diff.
//
// Nothing else in weft imports github.com/vishvananda/netlink.
package netlinkx

import (
	"fmt"
	"net"
	"net/netip"
)

// MAC is a 48-bit Ethernet address. Unlike net.HardwareAddr it is
// comparable, so entries holding one can be map keys and diffed with ==.
type MAC [6]byte

// ParseMAC parses "c6:d2:32:6f:8f:44" (any form net.ParseMAC accepts that
// has six bytes).
func ParseMAC(s string) (MAC, error) {
	hw, err := net.ParseMAC(s)
	if err != nil {
		return MAC{}, err
	}
	return MACFrom(hw)
}

// MACFrom converts a six-byte net.HardwareAddr.
func MACFrom(hw net.HardwareAddr) (MAC, error) {
	var m MAC
	if len(hw) != len(m) {
		return MAC{}, fmt.Errorf("MAC %s: want 6 bytes, have %d", hw, len(hw))
	}
	copy(m[:], hw)
	return m, nil
}

// HardwareAddr returns a fresh net.HardwareAddr holding m.
func (m MAC) HardwareAddr() net.HardwareAddr { return append(net.HardwareAddr(nil), m[:]...) }

func (m MAC) String() string { return m.HardwareAddr().String() }

// IsZero reports whether m is 00:00:00:00:00:00.
func (m MAC) IsZero() bool { return m == MAC{} }

// IsUnicast reports whether m is a non-zero individual (not group) address.
func (m MAC) IsUnicast() bool { return !m.IsZero() && m[0]&1 == 0 }

// MarshalText renders m as flannel does in VtepMAC: lower-case, colons.
func (m MAC) MarshalText() ([]byte, error) { return []byte(m.String()), nil }

// UnmarshalText parses what MarshalText writes.
func (m *MAC) UnmarshalText(b []byte) error {
	v, err := ParseMAC(string(b))
	if err != nil {
		return err
	}
	*m = v
	return nil
}

// Route is one unicast, single-path route. The zero Table is the main table.
//
//	ip route replace Dst [via Gw] dev LinkIndex [onlink] [metric Priority] [table Table]
type Route struct {
	Dst       netip.Prefix
	Gw        netip.Addr // invalid for a device (scope link) route
	LinkIndex int
	OnLink    bool
	Priority  int
	Table     int
}

// Key is what the kernel identifies a route by: a replace with the same
// key changes the route in place, a different key adds a second one.
func (r Route) Key() RouteKey { return RouteKey{Dst: r.Dst, Priority: r.Priority, Table: r.Table} }

// RouteKey identifies a route within the kernel's FIB.
type RouteKey struct {
	Dst      netip.Prefix
	Priority int
	Table    int
}

func (r Route) String() string {
	s := r.Dst.String()
	if r.Gw.IsValid() {
		s += " via " + r.Gw.String()
	}
	s += fmt.Sprintf(" dev #%d", r.LinkIndex)
	if r.OnLink {
		s += " onlink"
	}
	if r.Priority != 0 {
		s += fmt.Sprintf(" metric %d", r.Priority)
	}
	if r.Table != 0 {
		s += fmt.Sprintf(" table %d", r.Table)
	}
	return s
}

// RouteFilter selects routes to list. Zero fields match everything, except
// Table: 0 is the main table, as with `ip route show`; TableAll lists all.
type RouteFilter struct {
	Family    Family
	LinkIndex int
	Table     int
}

// TableAll in RouteFilter.Table lists routes of every table.
const TableAll = -1

// Family is an address family for listing.
type Family int

// Address families.
const (
	FamilyAll Family = 0
	FamilyV4  Family = 2  // AF_INET
	FamilyV6  Family = 10 // AF_INET6
)

// FamilyOf is a's family.
func FamilyOf(a netip.Addr) Family {
	if a.Is4() {
		return FamilyV4
	}
	return FamilyV6
}

// Neighbour states (NUD_*), as `ip neigh` names them.
const (
	NUDReachable = 0x02
	NUDStale     = 0x04
	NUDPermanent = 0x80
)

// Neigh is an IP neighbour (ARP/NDP) entry.
//
//	ip neigh replace IP lladdr MAC nud STATE dev LinkIndex
type Neigh struct {
	LinkIndex int
	IP        netip.Addr
	MAC       MAC
	State     int // NUD* bits; NeighSet uses NUDPermanent when 0
}

// state is the state a write gives the entry: NUDPermanent for 0.
func (n Neigh) state() int {
	if n.State == 0 {
		return NUDPermanent
	}
	return n.State
}

// Key identifies the entry in the kernel's neighbour table.
func (n Neigh) Key() NeighKey { return NeighKey{LinkIndex: n.LinkIndex, IP: n.IP} }

// NeighKey identifies a neighbour entry.
type NeighKey struct {
	LinkIndex int
	IP        netip.Addr
}

func (n Neigh) String() string {
	return fmt.Sprintf("%s lladdr %s dev #%d", n.IP, n.MAC, n.LinkIndex)
}

// FDB is a permanent forwarding entry on a VXLAN device's own table: frames
// for MAC are sent, encapsulated, to Dst.
//
//	bridge fdb replace MAC dev LinkIndex dst Dst self permanent
type FDB struct {
	LinkIndex int
	MAC       MAC
	Dst       netip.Addr
}

// Key identifies the entry: the kernel keeps one entry per MAC (whose first
// destination a replace changes).
func (f FDB) Key() FDBKey { return FDBKey{LinkIndex: f.LinkIndex, MAC: f.MAC} }

// FDBKey identifies an FDB entry.
type FDBKey struct {
	LinkIndex int
	MAC       MAC
}

func (f FDB) String() string {
	return fmt.Sprintf("%s dst %s dev #%d", f.MAC, f.Dst, f.LinkIndex)
}

// Addr is an interface address with the kernel's IFA_F_* flags.
//
//	ip addr show dev NAME
type Addr struct {
	Prefix netip.Prefix // the address with its on-link prefix length
	Flags  int          // AddrF* bits
}

// Address flags (IFA_F_*), as `ip addr` names them.
const (
	// AddrFTemporary is an IPv6 privacy address; on IPv4 the same bit
	// marks a secondary address (IFA_F_SECONDARY).
	AddrFTemporary  = 0x01
	AddrFTentative  = 0x40 // IPv6 duplicate address detection not done
	AddrFDeprecated = 0x20 // preferred lifetime over
	// AddrFPermanent is set on addresses configured with infinite
	// lifetime; autoconfigured (SLAAC, DHCP with lifetimes) ones lack it
	// and `ip addr` calls them dynamic.
	AddrFPermanent = 0x80
)

// RouteLookup is the kernel's answer to `ip route get DST`.
type RouteLookup struct {
	LinkIndex int        // the interface a packet for DST leaves by
	Src       netip.Addr // the source address it would get; invalid if the kernel names none
	Gw        netip.Addr // the next hop; invalid when DST is on-link
}

// IPNetOf is p as the net package's type, for libraries that speak it.
func IPNetOf(p netip.Prefix) net.IPNet {
	return net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// PrefixOf is n as a netip.Prefix (an IPv4-mapped address unmapped); false
// when n is not a valid IPv4 or IPv6 prefix.
func PrefixOf(n net.IPNet) (netip.Prefix, bool) {
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok {
		return netip.Prefix{}, false
	}
	ones, bits := n.Mask.Size()
	a = a.Unmap()
	if bits != a.BitLen() {
		return netip.Prefix{}, false
	}
	return netip.PrefixFrom(a, ones), true
}

// UDPSocket is a UDP socket of a network namespace as sock_diag shows
// it: where it is bound and the buffer limits the kernel gave it
// (sk_rcvbuf, sk_sndbuf). Those are twice what SO_RCVBUF/SO_SNDBUF asked
// for, once net.core.rmem_max/wmem_max capped the request (SO_*BUFFORCE
// is not capped): the kernel counts its bookkeeping in the buffer.
type UDPSocket struct {
	Local          netip.AddrPort
	RcvBuf, SndBuf int
}
