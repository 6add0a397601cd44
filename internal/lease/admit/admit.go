// Package admit decides which leases of the store a node may program. The
// store is writable by every node (and by whoever holds its credentials),
// so a lease is only a claim: one that is not subnet-sized, lies outside
// the cluster network, or overlaps this node's subnet or another node's
// lease would, once routed, take traffic away from pods that own those
// addresses. flannel routes all of them. Every backend gets the same
// verdicts, because the daemon hands them only the admitted set.
package admit

import (
	"cmp"
	"fmt"
	"maps"
	"net/netip"
	"slices"

	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/lease"
)

// Refusal says why a lease is not admitted.
type Refusal struct {
	Key    string
	Subnet netip.Prefix // what the lease claims (IPv4, else IPv6)
	Reason string
}

// Set is the lease set with the verdict on each lease, kept across events
// so that a change costs time proportional to it. Of two leases that claim
// one subnet, the one seen first keeps it: the newcomer is the suspect.
// The zero value is not usable; call Reset. Not safe for concurrent use.
type Set struct {
	n      *config.Network
	own    lease.Lease
	ownKey string
	bits4  int // subnet length every IPv4 lease must have
	bits6  int

	leases map[string]*entry                  // every lease but our own, by key
	claims map[netip.Prefix]map[string]*entry // admissible leases by each subnet they claim
	seq    uint64
}

type entry struct {
	l      lease.Lease
	seq    uint64 // when first seen: the older lease wins a contested subnet
	reason string // why inadmissible on its own; "" if admissible
}

// Reset judges the lease set afresh (by key, as the watch reported it)
// for the network and our own lease, keeping the age of leases already
// known, and returns the admitted ones (own first, as it was acquired,
// then in key order) and the refusals.
func (s *Set) Reset(n *config.Network, own lease.Lease, leases map[string]lease.Lease) ([]lease.Lease, []Refusal) {
	old := s.leases
	s.n, s.own = n, own
	s.ownKey = own.Key()
	s.bits4, s.bits6 = n.SubnetLen, n.IPv6SubnetLen
	// In Kubernetes mode the subnets are podCIDRs, whose length is the
	// controller-manager's --node-cidr-mask-size, not SubnetLen: every
	// node's is the same as ours.
	if own.Subnet.IsValid() {
		s.bits4 = own.Subnet.Bits()
	}
	if own.IPv6Subnet.IsValid() {
		s.bits6 = own.IPv6Subnet.Bits()
	}
	s.leases = make(map[string]*entry, len(leases))
	s.claims = make(map[netip.Prefix]map[string]*entry, len(leases))
	// Known leases keep their age; new ones are aged in key order after
	// them, so that nodes judging the same snapshot agree.
	ks := slices.Sorted(maps.Keys(leases))
	slices.SortStableFunc(ks, func(a, b string) int {
		ea, eb := old[a], old[b]
		switch {
		case ea != nil && eb != nil:
			return cmp.Compare(ea.seq, eb.seq)
		case ea != nil:
			return -1
		case eb != nil:
			return 1
		}
		return 0
	})
	for _, key := range ks {
		l := leases[key]
		if key == s.ownKey && lease.SameNode(l.Attrs, own.Attrs) {
			continue
		}
		e := &entry{l: l, reason: s.judge(l)}
		if o := old[key]; o != nil {
			e.seq = o.seq
		} else {
			e.seq = s.next()
		}
		s.insert(e)
	}
	return s.admitted(), s.refusals()
}

// Update applies watch events, in order, and returns the events that take
// the admitted set along: a lease admitted or changed is Added, one no
// longer admitted (gone, changed into something inadmissible, or beaten
// by an older claim) is Removed. verdicts holds, for every lease whose
// verdict may have changed, its refusal, or one with an empty Reason when
// it is admitted or gone.
func (s *Set) Update(evs []lease.Event) (out []lease.Event, verdicts []Refusal) {
	// The leases touched, and every lease contesting a subnet with them.
	touched := map[string]bool{}
	for _, ev := range evs {
		key := ev.Lease.Key()
		touched[key] = true
		for _, p := range claimed(ev.Lease) {
			for k := range s.claims[p] {
				touched[k] = true
			}
		}
		if e := s.leases[key]; e != nil {
			for _, p := range claimed(e.l) {
				for k := range s.claims[p] {
					touched[k] = true
				}
			}
		}
	}
	keys := slices.Sorted(maps.Keys(touched))
	before := make(map[string]lease.Lease, len(keys))
	for _, k := range keys {
		if e := s.leases[k]; e != nil && s.admits(e) {
			before[k] = e.l
		}
	}
	for _, ev := range evs {
		key := ev.Lease.Key()
		old := s.leases[key]
		if old != nil {
			s.remove(old)
		}
		if ev.Type == lease.Removed || key == s.ownKey && lease.SameNode(ev.Lease.Attrs, s.own.Attrs) {
			continue
		}
		e := &entry{l: ev.Lease, reason: s.judge(ev.Lease)}
		if old != nil {
			e.seq = old.seq // a changed lease keeps its age
		} else {
			e.seq = s.next()
		}
		s.insert(e)
	}
	// Removals first: a subnet that passes from one lease to another is
	// withdrawn before it is routed anew.
	var added []lease.Event
	for _, k := range keys {
		e := s.leases[k]
		was, had := before[k]
		now := e != nil && s.admits(e)
		switch {
		case had && (!now || !was.Equal(e.l)):
			out = append(out, lease.Event{Type: lease.Removed, Lease: was})
			if now {
				added = append(added, lease.Event{Type: lease.Added, Lease: e.l})
			}
		case now && !had:
			added = append(added, lease.Event{Type: lease.Added, Lease: e.l})
		}
		switch {
		case e == nil:
			verdicts = append(verdicts, Refusal{Key: k, Subnet: subnetOf(evLease(evs, k))})
		case now:
			verdicts = append(verdicts, Refusal{Key: k, Subnet: subnetOf(e.l)})
		default:
			verdicts = append(verdicts, s.refusal(e))
		}
	}
	return append(out, added...), verdicts
}

// Refusals lists every lease not admitted, in key order.
func (s *Set) refusals() []Refusal {
	var out []Refusal
	for _, k := range slices.Sorted(maps.Keys(s.leases)) {
		if e := s.leases[k]; !s.admits(e) {
			out = append(out, s.refusal(e))
		}
	}
	return out
}

// admitted lists own and every admitted lease, in key order after own.
func (s *Set) admitted() []lease.Lease {
	out := make([]lease.Lease, 0, len(s.leases)+1)
	out = append(out, s.own)
	for _, k := range slices.Sorted(maps.Keys(s.leases)) {
		if e := s.leases[k]; s.admits(e) {
			out = append(out, e.l)
		}
	}
	return out
}

func (s *Set) next() uint64 { s.seq++; return s.seq }

func (s *Set) insert(e *entry) {
	s.leases[e.l.Key()] = e
	if e.reason != "" {
		return
	}
	for _, p := range claimed(e.l) {
		m := s.claims[p]
		if m == nil {
			m = map[string]*entry{}
			s.claims[p] = m
		}
		m[e.l.Key()] = e
	}
}

func (s *Set) remove(e *entry) {
	key := e.l.Key()
	delete(s.leases, key)
	for _, p := range claimed(e.l) {
		if m := s.claims[p]; m != nil {
			delete(m, key)
			if len(m) == 0 {
				delete(s.claims, p)
			}
		}
	}
}

// admits reports whether e is admissible and the oldest claimant of each
// subnet it claims.
func (s *Set) admits(e *entry) bool {
	return e.reason == "" && s.rival(e) == nil
}

// rival is the older lease that holds a subnet e claims, if any.
func (s *Set) rival(e *entry) *entry {
	for _, p := range claimed(e.l) {
		for _, o := range s.claims[p] {
			if o != e && (o.seq < e.seq || o.seq == e.seq && o.l.Key() < e.l.Key()) {
				return o
			}
		}
	}
	return nil
}

func (s *Set) refusal(e *entry) Refusal {
	r := Refusal{Key: e.l.Key(), Subnet: subnetOf(e.l), Reason: e.reason}
	if r.Reason == "" {
		if o := s.rival(e); o != nil {
			r.Reason = fmt.Sprintf("overlaps lease %s (%s), which was there first", o.l.Key(), publicIP(o.l))
		}
	}
	return r
}

// judge says why l is inadmissible whatever the other leases, or "".
func (s *Set) judge(l lease.Lease) string {
	if !l.Subnet.IsValid() && !l.IPv6Subnet.IsValid() {
		return "no subnet"
	}
	if why := s.judgeFamily(l.Subnet, s.n.EnableIPv4, s.n.Network, s.bits4, s.own.Subnet, "Network", "SubnetLen"); why != "" {
		return why
	}
	return s.judgeFamily(l.IPv6Subnet, s.n.EnableIPv6, s.n.IPv6Network, s.bits6, s.own.IPv6Subnet, "IPv6Network", "IPv6SubnetLen")
}

func (s *Set) judgeFamily(sn netip.Prefix, enabled bool, network netip.Prefix, bits int, own netip.Prefix, netKey, lenKey string) string {
	switch {
	case !sn.IsValid():
		return ""
	case !enabled || !network.IsValid():
		return "" // a family this network does not route: the backends ignore that part
	case sn != sn.Masked():
		return fmt.Sprintf("subnet %s is not a network address", sn)
	case !network.Contains(sn.Addr()) || sn.Bits() < network.Bits():
		return fmt.Sprintf("subnet %s is not inside the cluster network (%s %s)", sn, netKey, network)
	case sn.Bits() != bits:
		return fmt.Sprintf("subnet %s is not /%d (%s, and this node's subnet)", sn, bits, lenKey)
	case own.IsValid() && own.Overlaps(sn):
		return fmt.Sprintf("subnet %s overlaps this node's own %s", sn, own)
	}
	return ""
}

// claimed lists the subnets a lease claims.
func claimed(l lease.Lease) []netip.Prefix {
	var out []netip.Prefix
	if l.Subnet.IsValid() {
		out = append(out, l.Subnet)
	}
	if l.IPv6Subnet.IsValid() {
		out = append(out, l.IPv6Subnet)
	}
	return out
}

func subnetOf(l lease.Lease) netip.Prefix {
	if l.Subnet.IsValid() {
		return l.Subnet
	}
	return l.IPv6Subnet
}

func publicIP(l lease.Lease) string {
	if l.Attrs.PublicIP.IsValid() {
		return l.Attrs.PublicIP.String()
	}
	if l.Attrs.PublicIPv6 != nil {
		return l.Attrs.PublicIPv6.String()
	}
	return "no PublicIP"
}

// evLease is the last lease evs name under key.
func evLease(evs []lease.Event, key string) lease.Lease {
	var l lease.Lease
	for _, ev := range evs {
		if ev.Lease.Key() == key {
			l = ev.Lease
		}
	}
	return l
}
