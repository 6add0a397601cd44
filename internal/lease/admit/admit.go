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
// one subnet, the older keeps it: the newcomer is the suspect. Age is the
// store's (lease.Lease.Created), so that every node, a restarted one too,
// picks the same; where the store gives none, the one seen first.
// The zero value is not usable; call Reset. Not safe for concurrent use.
type Set struct {
	n      *config.Network
	own    lease.Lease
	ownKey string
	bits4  int // subnet length every IPv4 lease must have
	bits6  int
	ownIDs []string // own's identities: no other lease may claim them

	leases map[string]*entry   // every lease but our own, by key
	claims map[string][]*entry // admissible leases by each thing they claim (mostly one)
	seq    uint64

	// Identity, when set, names what else than its subnets a lease must
	// hold alone: the backend's identity of the node (vxlan: "VtepMAC
	// <mac>"; two FDB entries for one MAC cannot be).
	Identity func(lease.Lease) []string
}

type entry struct {
	l      lease.Lease
	key    string   // l.Key(), rendered once
	seq    uint64   // when first seen: the older lease wins a contest when the store gives no age
	reason string   // why inadmissible on its own; "" if admissible
	claims []string // its subnets and identities
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
	s.ownIDs = nil
	if s.Identity != nil {
		s.ownIDs = s.Identity(own)
	}
	s.leases = make(map[string]*entry, len(leases))
	s.claims = make(map[string][]*entry, len(leases))
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
		o := old[key]
		if o != nil && o.l.Identical(l) {
			// Unchanged since the last pass: only the verdict may differ
			// (own or the network may have changed).
			// The entry is reused: a full pass every resync over
			// thousands of leases allocates nothing for them.
			o.l, o.reason = l, s.judge(l)
			if o.reason == "" {
				o.reason = s.ownClash(o.claims)
			}
			s.insert(o)
			continue
		}
		e := s.newEntry(l, key)
		if o != nil {
			e.seq = o.seq
		}
		s.insert(e)
	}
	return s.Admitted(), s.refusals()
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
	last := map[string]lease.Lease{} // the last lease evs name under each key
	fresh := make([]*entry, len(evs))
	for i, ev := range evs {
		key := ev.Lease.Key()
		touched[key] = true
		last[key] = ev.Lease
		var claims []string
		if e := s.leases[key]; e != nil {
			claims = e.claims
		}
		if ev.Type != lease.Removed {
			fresh[i] = s.newEntry(ev.Lease, key)
			claims = append(slices.Clip(claims), fresh[i].claims...)
		}
		for _, c := range claims {
			for _, o := range s.claims[c] {
				touched[o.key] = true
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
	for i, ev := range evs {
		key := ev.Lease.Key()
		old := s.leases[key]
		if old != nil {
			s.remove(old)
		}
		if ev.Type == lease.Removed || key == s.ownKey && lease.SameNode(ev.Lease.Attrs, s.own.Attrs) {
			continue
		}
		e := fresh[i]
		if old != nil {
			e.seq = old.seq // a changed lease keeps its age
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
			verdicts = append(verdicts, Refusal{Key: k, Subnet: subnetOf(last[k])})
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

// Admitted lists own and every admitted lease, in key order after own: as
// Reset returned it, changed by every Update since.
func (s *Set) Admitted() []lease.Lease {
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

// newEntry judges l, as a lease seen for the first time.
func (s *Set) newEntry(l lease.Lease, key string) *entry {
	e := &entry{l: l, key: key, seq: s.next(), reason: s.judge(l)}
	if l.Subnet.IsValid() {
		e.claims = append(e.claims, "subnet "+l.Subnet.String())
	}
	if l.IPv6Subnet.IsValid() {
		e.claims = append(e.claims, "subnet "+l.IPv6Subnet.String())
	}
	if s.Identity != nil {
		e.claims = append(e.claims, s.Identity(l)...)
	}
	if e.reason == "" {
		e.reason = s.ownClash(e.claims)
	}
	return e
}

// ownClash says which of claims is our own node's identity, if one is.
func (s *Set) ownClash(claims []string) string {
	for _, c := range claims {
		if slices.Contains(s.ownIDs, c) {
			return c + " is this node's own"
		}
	}
	return ""
}

func (s *Set) insert(e *entry) {
	s.leases[e.key] = e
	if e.reason != "" {
		return
	}
	for _, c := range e.claims {
		s.claims[c] = append(s.claims[c], e)
	}
}

func (s *Set) remove(e *entry) {
	key := e.key
	delete(s.leases, key)
	for _, c := range e.claims {
		if rest := slices.DeleteFunc(s.claims[c], func(o *entry) bool { return o.key == key }); len(rest) > 0 {
			s.claims[c] = rest
		} else {
			delete(s.claims, c)
		}
	}
}

// admits reports whether e is admissible and the oldest claimant of each
// subnet it claims.
func (s *Set) admits(e *entry) bool {
	if e.reason != "" {
		return false
	}
	o, _ := s.rival(e)
	return o == nil
}

// rival is the oldest lease older than e that holds something e claims,
// and what: always the same one, whatever order the claims were made in,
// so that a refusal reads the same on every pass (one warning, one count).
func (s *Set) rival(e *entry) (*entry, string) {
	var best *entry
	var what string
	for _, c := range e.claims {
		for _, o := range s.claims[c] {
			if o != e && older(o, e) && (best == nil || older(o, best)) {
				best, what = o, c
			}
		}
	}
	return best, what
}

// older reports whether a wins a contest with b: the store's older lease,
// else the one seen first, else the lower key.
func older(a, b *entry) bool {
	if ca, cb := a.l.Created, b.l.Created; ca != 0 && cb != 0 && ca != cb {
		return ca < cb
	}
	if a.seq != b.seq {
		return a.seq < b.seq
	}
	return a.key < b.key
}

func (s *Set) refusal(e *entry) Refusal {
	r := Refusal{Key: e.key, Subnet: subnetOf(e.l), Reason: e.reason}
	if r.Reason == "" {
		if o, c := s.rival(e); o != nil {
			r.Reason = fmt.Sprintf("%s is also lease %s's (%s), which was there first", c, o.key, publicIP(o.l))
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
