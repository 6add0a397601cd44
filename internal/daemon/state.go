package daemon

import (
	"time"

	"github.com/weft-net/weft/internal/lease"
)

// leaseSet is the lease set as the watch reported it, by key.
type leaseSet map[string]lease.Lease

// apply folds events into s. It reports whether own was lost: its key
// removed, or now held by another node, and not ours again by the end of
// evs (a batch that expired our key and then holds our re-acquisition of
// it, after an outage longer than the TTL, loses nothing).
func (s leaseSet) apply(evs []lease.Event, own lease.Lease) (lost bool) {
	ownKey := ""
	if own.Subnet.IsValid() || own.IPv6Subnet.IsValid() {
		ownKey = own.Key()
	}
	for _, ev := range evs {
		key := ev.Lease.Key()
		switch ev.Type {
		case lease.Removed:
			delete(s, key)
			// A late event about the key's previous holder is not ours.
			if key == ownKey && lease.SameNode(ev.Lease.Attrs, own.Attrs) {
				lost = true
			}
		default:
			s[key] = ev.Lease
			if key == ownKey && !lease.SameNode(ev.Lease.Attrs, own.Attrs) {
				lost = true
			}
		}
	}
	if cur, ok := s[ownKey]; lost && ok && lease.SameNode(cur.Attrs, own.Attrs) {
		return false
	}
	return lost
}

// holder returns the lease naming publicIP, if the set has one.
func (s leaseSet) holder(a lease.Attrs) (lease.Lease, bool) {
	for _, l := range s {
		if lease.SameNode(l.Attrs, a) {
			return l, true
		}
	}
	return lease.Lease{}, false
}

// batch is one call of the watch callback. snapshot marks the first call
// of a Watch, which lists the whole set.
type batch struct {
	events   []lease.Event
	snapshot bool
}

// drain collects first and every batch already queued on ch, without
// waiting, so that a burst of events costs one reconcile.
func drain(ch <-chan batch, first batch) []batch {
	out := []batch{first}
	for {
		select {
		case b := <-ch:
			out = append(out, b)
		default:
			return out
		}
	}
}

// renewAt is when to renew a lease obtained at got that expires at exp:
// margin before expiry, or at half its life when the margin is not shorter
// than the lifetime. A reservation (zero exp) is never renewed: zero.
func renewAt(got, exp time.Time, margin time.Duration) time.Time {
	if exp.IsZero() {
		return time.Time{}
	}
	ttl := exp.Sub(got)
	if margin >= ttl {
		return got.Add(ttl / 2)
	}
	return exp.Add(-margin)
}
