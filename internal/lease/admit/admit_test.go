package admit

import (
	"fmt"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/lease"
)

func network(t *testing.T, js string) *config.Network {
	t.Helper()
	n, _, err := config.Parse([]byte(js))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func mk(subnet, pub string) lease.Lease {
	return lease.Lease{Subnet: netip.MustParsePrefix(subnet),
		Attrs: lease.Attrs{PublicIP: netip.MustParseAddr(pub), BackendType: "vxlan"}}
}

func byKey(ls ...lease.Lease) map[string]lease.Lease {
	m := map[string]lease.Lease{}
	for _, l := range ls {
		m[l.Key()] = l
	}
	return m
}

func keys(ls []lease.Lease) string {
	var s []string
	for _, l := range ls {
		s = append(s, l.Key())
	}
	return strings.Join(s, " ")
}

// The hostile leases of issue 11, written beside real ones: each refused
// with its reason, the real ones admitted.
func TestHostileLeases(t *testing.T) {
	n := network(t, `{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}`)
	own := mk("10.244.84.0/24", "192.0.2.1")
	leases := []lease.Lease{
		own,
		mk("10.244.2.0/24", "192.0.2.2"),
		mk("10.244.38.2/32", "192.0.2.66"),   // not subnet-sized
		mk("10.244.84.128/25", "192.0.2.66"), // half of our own
		mk("10.244.0.0/17", "192.0.2.66"),    // a catch-all
		mk("192.0.2.0/24", "192.0.2.66"),     // the underlay, outside Network
		mk("10.244.84.0/24", "192.0.2.66"),   // our own key, another node
		mk("10.244.3.5/24", "192.0.2.66"),    // host bits set
		{IPv6Subnet: netip.MustParsePrefix("fd00::/64"), Attrs: lease.Attrs{PublicIP: netip.MustParseAddr("192.0.2.7")}}, // a family not enabled
	}
	var s Set
	got, refused := s.Reset(n, own, byKey(leases...))
	if want := own.Key() + " 10.244.2.0-24 fd00::-64"; keys(got) != want {
		t.Errorf("admitted %s, want %s", keys(got), want)
	}
	want := map[string]string{
		"10.244.38.2-32":   "not /24",
		"10.244.84.128-25": "not /24",
		"10.244.0.0-17":    "not /24",
		"192.0.2.0-24":     "not inside the cluster network (Network 10.244.0.0/16)",
		"10.244.84.0-24":   "overlaps this node's own 10.244.84.0/24",
		"10.244.3.5-24":    "not a network address",
	}
	if len(refused) != len(want) {
		t.Errorf("refused %v, want %d", refused, len(want))
	}
	for _, r := range refused {
		if !strings.Contains(r.Reason, want[r.Key]) || want[r.Key] == "" {
			t.Errorf("%s refused for %q, want %q", r.Key, r.Reason, want[r.Key])
		}
	}
}

// In Kubernetes mode podCIDRs have the controller-manager's mask size,
// which need not be SubnetLen: our own podCIDR's length is the rule.
func TestPodCIDRLength(t *testing.T) {
	n := network(t, `{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}`)
	own := mk("10.244.1.0/25", "192.0.2.1")
	var s Set
	got, refused := s.Reset(n, own, byKey(own, mk("10.244.1.128/25", "192.0.2.2"), mk("10.244.2.0/24", "192.0.2.3")))
	if keys(got) != own.Key()+" 10.244.1.128-25" || len(refused) != 1 || refused[0].Key != "10.244.2.0-24" {
		t.Errorf("admitted %s, refused %v", keys(got), refused)
	}
}

// Two leases claiming one IPv4 subnet (dual-stack keys differ in their
// IPv6 part): the one seen first keeps it, the other waits and takes over
// when the first goes.
func TestOlderWins(t *testing.T) {
	n := network(t, `{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/56","Backend":{"Type":"vxlan"}}`)
	own := mk("10.244.1.0/24", "192.0.2.1")
	own.IPv6Subnet = netip.MustParsePrefix("fd00:0:0:1::/64")
	first := mk("10.244.2.0/24", "192.0.2.2")
	first.IPv6Subnet = netip.MustParsePrefix("fd00:0:0:2::/64")
	second := mk("10.244.2.0/24", "192.0.2.66")
	second.IPv6Subnet = netip.MustParsePrefix("fd00:0:0:66::/64")
	var s Set
	s.Reset(n, own, byKey(own, first))
	out, verdicts := s.Update([]lease.Event{{Type: lease.Added, Lease: second}})
	if len(out) != 0 {
		t.Errorf("the newcomer changed the admitted set: %v", out)
	}
	if r := find(verdicts, second.Key()); !strings.Contains(r.Reason, "subnet 10.244.2.0/24 is also lease "+first.Key()) {
		t.Errorf("newcomer's verdict %q", r.Reason)
	}
	// A full pass keeps the ages.
	got, _ := s.Reset(n, own, byKey(second, first, own))
	if keys(got) != own.Key()+" "+first.Key() {
		t.Errorf("after Reset admitted %s", keys(got))
	}
	out, _ = s.Update([]lease.Event{{Type: lease.Removed, Lease: first}})
	if len(out) != 2 || out[0].Type != lease.Removed || out[0].Lease.Key() != first.Key() || out[1].Type != lease.Added || out[1].Lease.Key() != second.Key() {
		t.Errorf("first gone: %v; want it removed, then the second added", out)
	}
}

func find(rs []Refusal, key string) Refusal {
	for _, r := range rs {
		if r.Key == key {
			return r
		}
	}
	return Refusal{}
}

// TestUpdateInvariants drives random events through Update and checks,
// at every step, that the events it returns take a model of the admitted
// set to what the Set holds, that the admitted leases never overlap each
// other or our own subnet, and that every admissible lease left out has
// an older rival.
func TestUpdateInvariants(t *testing.T) {
	n := network(t, `{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/56","Backend":{"Type":"vxlan"}}`)
	own := mk("10.244.1.0/24", "192.0.2.1")
	own.IPv6Subnet = netip.MustParsePrefix("fd00:0:0:1::/64")
	rnd := rand.New(rand.NewPCG(3, 4))
	random := func() lease.Lease {
		l := mk(fmt.Sprintf("10.244.%d.0/%d", rnd.IntN(6), []int{24, 24, 24, 25}[rnd.IntN(4)]), fmt.Sprintf("192.0.2.%d", 2+rnd.IntN(9)))
		if rnd.IntN(2) == 0 {
			l.IPv6Subnet = netip.MustParsePrefix(fmt.Sprintf("fd00:0:0:%x::/64", rnd.IntN(6)))
		}
		return l
	}
	for run := range 40 {
		// The identity here is the PublicIP: leases collide on it often.
		s := Set{Identity: func(l lease.Lease) []string { return []string{"PublicIP " + l.Attrs.PublicIP.String()} }}
		s.Reset(n, own, nil)
		store := map[string]lease.Lease{}
		model := map[string]lease.Lease{}
		for step := range 60 {
			var evs []lease.Event
			for range 1 + rnd.IntN(3) {
				l := random()
				if old, ok := store[l.Key()]; ok && rnd.IntN(3) == 0 {
					delete(store, l.Key())
					evs = append(evs, lease.Event{Type: lease.Removed, Lease: old})
					continue
				}
				l.Attrs.BackendType = []string{"vxlan", "host-gw"}[rnd.IntN(2)] // a change
				store[l.Key()] = l
				evs = append(evs, lease.Event{Type: lease.Added, Lease: l})
			}
			out, _ := s.Update(evs)
			for _, ev := range out {
				if ev.Type == lease.Removed {
					if _, ok := model[ev.Lease.Key()]; !ok {
						t.Fatalf("run %d step %d: removed %s, which was not admitted", run, step, ev.Lease.Key())
					}
					delete(model, ev.Lease.Key())
				} else {
					model[ev.Lease.Key()] = ev.Lease
				}
			}
			adm := s.Admitted()[1:]
			if !sameSet(model, adm) {
				t.Fatalf("run %d step %d: events lead to %v, the set admits %s", run, step, model, keys(adm))
			}
			for i, a := range adm {
				if !store[a.Key()].Equal(a) {
					t.Fatalf("run %d step %d: admitted %s is not the store's", run, step, a.Key())
				}
				for _, p := range subnets(a) {
					if p.Overlaps(own.Subnet) || p.Overlaps(own.IPv6Subnet) {
						t.Fatalf("run %d step %d: admitted %s overlaps our own", run, step, a.Key())
					}
					for _, b := range adm[i+1:] {
						for _, q := range subnets(b) {
							if p.Overlaps(q) {
								t.Fatalf("run %d step %d: admitted %s and %s overlap", run, step, a.Key(), b.Key())
							}
						}
					}
				}
				for _, b := range adm[i+1:] {
					if a.Attrs.PublicIP == b.Attrs.PublicIP {
						t.Fatalf("run %d step %d: admitted %s and %s share identity %s", run, step, a.Key(), b.Key(), a.Attrs.PublicIP)
					}
				}
			}
			for k, l := range store {
				e := s.leases[k]
				if e == nil || !e.l.Equal(l) {
					t.Fatalf("run %d step %d: %s not held as the store has it", run, step, k)
				}
				if o, _ := s.rival(e); e.reason == "" && !s.admits(e) && o == nil {
					t.Fatalf("run %d step %d: %s left out without a reason", run, step, k)
				}
			}
		}
	}
}

func subnets(l lease.Lease) []netip.Prefix {
	var out []netip.Prefix
	for _, p := range []netip.Prefix{l.Subnet, l.IPv6Subnet} {
		if p.IsValid() {
			out = append(out, p)
		}
	}
	return out
}

func sameSet(m map[string]lease.Lease, ls []lease.Lease) bool {
	if len(m) != len(ls) {
		return false
	}
	return !slices.ContainsFunc(ls, func(l lease.Lease) bool { return !m[l.Key()].Equal(l) })
}

// A lease that copies a real node's VtepMAC (issue 11: the lowest subnet
// used to win it, taking the real node's traffic) is refused while the
// real node's older lease holds it, and so is one copying our own.
func TestIdentityOlderWins(t *testing.T) {
	n := network(t, `{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}`)
	mac := func(l lease.Lease, m string) lease.Lease {
		l.Attrs.BackendData = []byte(`{"VNI":1,"VtepMAC":"` + m + `"}`)
		return l
	}
	own := mac(mk("10.244.5.0/24", "192.0.2.1"), "02:00:00:00:00:01")
	real := mac(mk("10.244.9.0/24", "192.0.2.2"), "02:00:00:00:00:02")
	copyReal := mac(mk("10.244.0.0/24", "192.0.2.66"), "02:00:00:00:00:02")
	copyOwn := mac(mk("10.244.1.0/24", "192.0.2.66"), "02:00:00:00:00:01")
	s := Set{Identity: func(l lease.Lease) []string { return []string{"VtepMAC " + string(l.Attrs.BackendData[20:37])} }}
	s.Reset(n, own, byKey(own, real))
	out, verdicts := s.Update([]lease.Event{{Type: lease.Added, Lease: copyReal}, {Type: lease.Added, Lease: copyOwn}})
	if len(out) != 0 {
		t.Errorf("copies changed the admitted set: %v", out)
	}
	if r := find(verdicts, copyReal.Key()); r.Reason != "VtepMAC 02:00:00:00:00:02 is also lease 10.244.9.0-24's (192.0.2.2), which was there first" {
		t.Errorf("copy of a real node's MAC: %q", r.Reason)
	}
	if r := find(verdicts, copyOwn.Key()); r.Reason != "VtepMAC 02:00:00:00:00:01 is this node's own" {
		t.Errorf("copy of our MAC: %q", r.Reason)
	}
	// A full pass agrees.
	got, _ := s.Reset(n, own, byKey(own, real, copyReal, copyOwn))
	if keys(got) != own.Key()+" "+real.Key() {
		t.Errorf("after Reset admitted %s", keys(got))
	}
}

// Ages come from the store: a node that restarts (or that met the leases
// in another order) admits what a node that watched them arrive admits.
// Without them the restarted node aged by key, and a copy of a real
// node's VtepMAC under a lower key ("10.244.10.0-24" < "10.244.9.0-24")
// took that node's route.
func TestStoreAgeDecidesAfterRestart(t *testing.T) {
	n := network(t, `{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}`)
	mac := func(l lease.Lease, m string, created int64) lease.Lease {
		l.Attrs.BackendData = []byte(`{"VNI":1,"VtepMAC":"` + m + `"}`)
		l.Created = created
		return l
	}
	id := func(l lease.Lease) []string { return []string{"VtepMAC " + string(l.Attrs.BackendData[20:37])} }
	own := mac(mk("10.244.5.0/24", "192.0.2.1"), "02:00:00:00:00:01", 10)
	real := mac(mk("10.244.9.0/24", "192.0.2.2"), "02:00:00:00:00:02", 20)
	copied := mac(mk("10.244.10.0/24", "192.0.2.66"), "02:00:00:00:00:02", 30)

	running := Set{Identity: id}
	running.Reset(n, own, byKey(own, real))
	running.Update([]lease.Event{{Type: lease.Added, Lease: copied}})
	restarted := Set{Identity: id}
	got, refused := restarted.Reset(n, own, byKey(own, real, copied))
	if keys(got) != keys(running.Admitted()) || keys(got) != "10.244.5.0-24 10.244.9.0-24" {
		t.Errorf("restarted node admits %s, running node %s; want own and the real lease", keys(got), keys(running.Admitted()))
	}
	if len(refused) != 1 || refused[0].Key != copied.Key() {
		t.Errorf("refusals: %+v", refused)
	}
	// The store's age wins over the order of arrival: a node that saw the
	// copy first (its watch listed it before the real lease appeared to
	// it) still gives the MAC to the older lease.
	late := Set{Identity: id}
	late.Reset(n, own, byKey(own, copied))
	late.Update([]lease.Event{{Type: lease.Added, Lease: real}})
	if keys(late.Admitted()) != "10.244.5.0-24 10.244.9.0-24" {
		t.Errorf("node that met the copy first admits %s", keys(late.Admitted()))
	}
}

// A refusal names the oldest rival, on the incremental path as on a full
// one, so that it reads the same every time (one warning, one count): a
// changed lease moved to the end of its claim's list, and Update then
// named the next one.
func TestRefusalNamesOldestRival(t *testing.T) {
	n := network(t, `{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}`)
	mac := func(l lease.Lease) lease.Lease {
		l.Attrs.BackendData = []byte(`{"VNI":1,"VtepMAC":"02:00:00:00:00:aa"}`)
		return l
	}
	id := func(l lease.Lease) []string {
		if len(l.Attrs.BackendData) < 37 {
			return nil
		}
		return []string{"VtepMAC " + string(l.Attrs.BackendData[20:37])}
	}
	own := mk("10.244.5.0/24", "192.0.2.1")
	a, b, c := mac(mk("10.244.20.0/24", "192.0.2.20")), mac(mk("10.244.30.0/24", "192.0.2.30")), mac(mk("10.244.40.0/24", "192.0.2.40"))
	s := Set{Identity: id}
	s.Reset(n, own, byKey(own, a))
	s.Update([]lease.Event{{Type: lease.Added, Lease: b}})
	s.Update([]lease.Event{{Type: lease.Added, Lease: c}})
	a2 := a
	v6 := netip.MustParseAddr("2001:db8::20")
	a2.Attrs.PublicIPv6 = &v6 // a changed in place
	_, verdicts := s.Update([]lease.Event{{Type: lease.Added, Lease: a2}})
	_, refused := s.Reset(n, own, byKey(own, a2, b, c))
	if u, r := find(verdicts, c.Key()).Reason, find(refused, c.Key()).Reason; u == "" || u != r || !strings.Contains(u, a.Key()) {
		t.Errorf("refusal of %s: Update says %q, Reset %q; want both to name %s", c.Key(), u, r, a.Key())
	}
}
