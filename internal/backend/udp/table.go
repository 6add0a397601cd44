package udp

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"

	"golang.zx2c4.com/wireguard/conn"

	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/lease"
)

// peer is one remote node: packets for subnet go to endpoint, and
// datagrams from endpoint may carry packets from subnet.
type peer struct {
	subnet   netip.Prefix
	endpoint netip.AddrPort
	ep       conn.Endpoint // endpoint as the Bind wants it
}

// table maps destinations to peers. It is immutable once built: the
// datapath loads it through an atomic.Pointer and never locks, and
// Reconcile swaps in a new one.
type table struct {
	own     netip.Prefix // this node's subnet; invalid before Configure
	ownNet  uint32
	ownMask uint32

	// All leases share SubnetLen, so a lookup is usually one mask and one
	// map probe. lens holds every length present, longest first, so that
	// a lease of another length (config changed under running nodes)
	// still resolves by longest prefix.
	lens    []int
	byNet   map[uint64]*peer // netKey(subnet) -> peer
	senders map[netip.AddrPort]struct{}
	peers   []*peer // sorted by subnet; for logs and tests
}

// skipped is a lease the table left out, and why.
type skipped struct {
	Key    string
	Reason string
}

// isUDPPeer reports whether a lease speaks this backend's wire format.
// flannel's udp backend publishes no BackendType at all.
func isUDPPeer(l lease.Lease) bool {
	return l.Attrs.BackendType == "" || l.Attrs.BackendType == config.BackendUDP
}

// buildTable computes the peer table for own from the lease set. Remote
// leases that cannot be udp peers are left out and reported. newEP turns
// an address into the Bind's endpoint type.
func buildTable(own netip.Prefix, leases []lease.Lease, port uint16, newEP func(netip.AddrPort) (conn.Endpoint, error)) (*table, []skipped) {
	t := &table{
		own:     own,
		byNet:   make(map[uint64]*peer, len(leases)),
		senders: make(map[netip.AddrPort]struct{}, len(leases)),
	}
	if own.IsValid() {
		t.ownNet = addrUint32(own.Masked().Addr())
		t.ownMask = prefixMask(own.Bits())
	}
	var skip []skipped
	for _, l := range leases {
		if !l.Subnet.IsValid() || !l.Subnet.Addr().Is4() {
			continue // IPv6-only lease: this backend carries IPv4 only
		}
		if l.Subnet == own {
			continue
		}
		reason := ""
		switch {
		case !isUDPPeer(l):
			reason = fmt.Sprintf("backend %q, not udp", l.Attrs.BackendType)
		case !l.Attrs.PublicIP.Is4() || l.Attrs.PublicIP.IsUnspecified():
			reason = fmt.Sprintf("public IP %v is not a usable IPv4 address", l.Attrs.PublicIP)
		case own.IsValid() && l.Subnet.Overlaps(own):
			reason = fmt.Sprintf("subnet overlaps this node's %s", own)
		}
		sn := l.Subnet.Masked()
		if _, dup := t.byNet[netKey(sn)]; dup && reason == "" {
			reason = "duplicate subnet"
		}
		if reason != "" {
			skip = append(skip, skipped{Key: l.Key(), Reason: reason})
			continue
		}
		addr := netip.AddrPortFrom(l.Attrs.PublicIP, port)
		ep, err := newEP(addr)
		if err != nil {
			skip = append(skip, skipped{Key: l.Key(), Reason: fmt.Sprintf("endpoint %s: %v", addr, err)})
			continue
		}
		p := &peer{subnet: sn, endpoint: addr, ep: ep}
		t.byNet[netKey(sn)] = p
		t.senders[addr] = struct{}{}
		t.peers = append(t.peers, p)
		if !slices.Contains(t.lens, sn.Bits()) {
			t.lens = append(t.lens, sn.Bits())
		}
	}
	slices.SortFunc(t.lens, func(a, b int) int { return b - a })
	slices.SortFunc(t.peers, func(a, b *peer) int {
		return cmp.Or(a.subnet.Addr().Compare(b.subnet.Addr()), a.subnet.Bits()-b.subnet.Bits())
	})
	return t, skip
}

// lookup returns the peer whose subnet holds dst (longest prefix), or nil.
func (t *table) lookup(dst uint32) *peer {
	for _, l := range t.lens {
		if p := t.byNet[uint64(dst&prefixMask(l))<<8|uint64(l)]; p != nil {
			return p
		}
	}
	return nil
}

// isSender reports whether a datagram from a may come from a peer at all.
func (t *table) isSender(a netip.AddrPort) bool {
	_, ok := t.senders[a]
	return ok
}

// ownHas reports whether a is inside this node's subnet.
func (t *table) ownHas(a uint32) bool {
	return t.own.IsValid() && a&t.ownMask == t.ownNet
}

// sameAs reports whether u routes exactly like t (for logging changes only).
func (t *table) sameAs(u *table) bool {
	if t == nil || u == nil {
		return t == u
	}
	return t.own == u.own && slices.EqualFunc(t.peers, u.peers, func(a, b *peer) bool {
		return a.subnet == b.subnet && a.endpoint == b.endpoint
	})
}

func netKey(p netip.Prefix) uint64 {
	return uint64(addrUint32(p.Addr()))<<8 | uint64(p.Bits())
}

func prefixMask(bits int) uint32 {
	if bits <= 0 {
		return 0
	}
	return ^uint32(0) << (32 - bits)
}
