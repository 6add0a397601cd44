package daemon

import (
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/netip"
	"testing"

	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/lease"
)

// TestAdmittedSetKept feeds random watch batches (new, changed and
// removed leases; hostile ones: not subnet-sized, outside the network,
// over our own subnet, a subnet or identity claimed twice) through the
// loop's path, applyBatches then admitEvents, and checks after each that
// the set a periodic pass reuses is the one a Reset judges afresh.
func TestAdmittedSetKept(t *testing.T) {
	n, _, err := config.Parse([]byte(`{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}`))
	if err != nil {
		t.Fatal(err)
	}
	mk := func(subnet, pub string) lease.Lease {
		return lease.Lease{Subnet: netip.MustParsePrefix(subnet), Attrs: lease.Attrs{PublicIP: netip.MustParseAddr(pub), BackendType: "vxlan"}}
	}
	own := mk("10.244.1.0/24", "192.0.2.1")
	rnd := rand.New(rand.NewPCG(11, 12))
	subnets := []string{"10.244.1.0/24", "10.244.2.0/24", "10.244.3.0/24", "10.244.4.0/24", "10.244.5.0/24",
		"10.244.2.128/25", "10.244.0.0/17", "10.245.0.0/24"}
	d := &daemon{log: slog.New(slog.NewTextHandler(io.Discard, nil)), metrics: newMetrics(), net: n, own: own, leases: leaseSet{}}
	// The identity: the PublicIP, which the random leases share often.
	d.admit.Identity = func(l lease.Lease) []string { return []string{"PublicIP " + l.Attrs.PublicIP.String()} }
	d.admittedLeases()
	cheap := 0
	for step := range 3000 {
		var evs []lease.Event
		for range 1 + rnd.IntN(3) {
			l := mk(subnets[rnd.IntN(len(subnets))], fmt.Sprintf("192.0.2.%d", 1+rnd.IntN(8)))
			if old, ok := d.leases[l.Key()]; ok && rnd.IntN(3) == 0 {
				evs = append(evs, lease.Event{Type: lease.Removed, Lease: old})
				continue
			}
			evs = append(evs, lease.Event{Type: lease.Added, Lease: l})
		}
		if _, lost, _ := d.applyBatches([]batch{{events: evs}}); lost && rnd.IntN(2) == 0 {
			// The loop acquires again (and Resets); should that fail,
			// later events go to admit while these never did: the next
			// pass must still judge afresh.
			continue
		}
		d.admitEvents(evs)
		d.resetsSkipped = 0 // every pass may reuse the set here
		got := d.admittedFor(true)
		if d.resetsSkipped == 1 {
			cheap++
		}
		want := d.admittedLeases()
		if len(got) != len(want) {
			t.Fatalf("step %d: reused set %s, a Reset admits %s", step, names(got), names(want))
		}
		for i := range got {
			if got[i].Key() != want[i].Key() || !got[i].Identical(want[i]) {
				t.Fatalf("step %d: reused set %s, a Reset admits %s", step, names(got), names(want))
			}
		}
	}
	if cheap < 1000 {
		t.Fatalf("the set was reused in %d of 3000 passes", cheap)
	}

	// What makes the next pass judge afresh: a change admit has not seen,
	// another own, resetEvery passes.
	d.applyBatches([]batch{{events: []lease.Event{{Type: lease.Added, Lease: mk("10.244.9.0/24", "192.0.2.99")}}}})
	if d.admittedFor(true); d.resetsSkipped != 0 {
		t.Error("a change admit has not seen did not make the pass Reset")
	}
	d.own = mk("10.244.10.0/24", "192.0.2.1")
	if d.admittedFor(true); d.resetsSkipped != 0 {
		t.Error("another own lease did not make the pass Reset")
	}
	for i := range resetEvery - 1 {
		if d.admittedFor(true); d.resetsSkipped != i+1 {
			t.Fatalf("pass %d after a Reset: %d skipped", i+1, d.resetsSkipped)
		}
	}
	if d.admittedFor(true); d.resetsSkipped != 0 {
		t.Errorf("pass %d after a Reset reused the set", resetEvery)
	}
	if d.admittedFor(false); d.resetsSkipped != 0 {
		t.Error("a pass that must judge afresh reused the set")
	}
}

func names(ls []lease.Lease) string {
	s := ""
	for _, l := range ls {
		s += l.Key() + "(" + l.Attrs.PublicIP.String() + ") "
	}
	return s
}
