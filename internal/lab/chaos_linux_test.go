package lab

import (
	"fmt"
	"maps"
	"math/rand/v2"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/lease/admit"
	"github.com/weft-net/weft/internal/netlinkx"
)

// A dual-stack run's echoes land in the kind and family of the window
// they fall in; a loss on a family the fault did not cut is collateral,
// and a defect, as is any loss of a fault that cuts nothing.
func TestChaosCountPerFamily(t *testing.T) {
	t0 := time.Unix(1_700_000_000, 0)
	at := func(ms int) time.Time { return t0.Add(time.Duration(ms) * time.Millisecond) }
	r := ChaosReport{Classes: []ChaosClass{
		{Name: "route-del", CutsPath: true, Families: []FamilyEchoes{{IPv6: false}, {IPv6: true}}},
		{Name: "agent-kill", Families: []FamilyEchoes{{IPv6: false}, {IPv6: true}}},
	}}
	windows := []window{
		{class: 0, from: at(0), to: at(1000), cuts: []bool{true}},     // an IPv6 route deleted
		{class: 1, from: at(2000), to: at(3000)},                      // weftd killed
		{class: 0, from: at(4000), to: at(5000), cuts: []bool{false}}, // an IPv4 route deleted
	}
	echoes := []echo{
		{at: at(100), v6: true, lost: true},  // the cut family: allowed
		{at: at(200), v6: true, lost: true},  // ditto
		{at: at(300), v6: false, lost: true}, // IPv4, not cut: collateral
		{at: at(400), v6: false},
		{at: at(1500), v6: false, lost: true}, // between windows: nobody's
		{at: at(2100), v6: true, lost: true},  // cuts nothing: collateral
		{at: at(2200), v6: false},
		{at: at(4100), v6: false, lost: true}, // the cut family
		{at: at(4200), v6: true},
		{at: at(5000), v6: true, lost: true}, // the window's end is outside it
	}
	r.count(echoes, windows)
	rd, ak := r.Classes[0], r.Classes[1]
	if rd.Sent != 6 || rd.Lost != 4 || rd.Collateral != 1 {
		t.Errorf("route-del: sent %d lost %d collateral %d, want 6 4 1", rd.Sent, rd.Lost, rd.Collateral)
	}
	if f := rd.Families[0]; f.Sent != 3 || f.Lost != 2 || f.Collateral != 1 {
		t.Errorf("route-del IPv4: %+v, want 3 sent, 2 lost, 1 collateral", f)
	}
	if f := rd.Families[1]; f.Sent != 3 || f.Lost != 2 || f.Collateral != 0 {
		t.Errorf("route-del IPv6: %+v, want 3 sent, 2 lost, none collateral", f)
	}
	if ak.Sent != 2 || ak.Lost != 1 || ak.Collateral != 1 || ak.Families[1].Collateral != 1 {
		t.Errorf("agent-kill: %+v, want 2 sent, 1 lost on IPv6, collateral", ak)
	}
	if n := r.Unhealed(); n != 2 {
		t.Errorf("Unhealed %d, want 2 (both kinds lost packets they must not)", n)
	}

	// The same faults losing only what they cut are healthy.
	clean := ChaosReport{Classes: []ChaosClass{{Name: "route-del", CutsPath: true}, {Name: "agent-kill"}}}
	var kept []echo
	for _, e := range echoes {
		if e.at != at(300) && e.at != at(2100) {
			kept = append(kept, e)
		}
	}
	clean.count(kept, windows)
	if n := clean.Unhealed(); n != 0 {
		t.Errorf("losses only on the cut families: Unhealed %d, want 0: %+v", n, clean.Classes)
	}
}

func TestChaosRender(t *testing.T) {
	r := ChaosReport{Classes: []ChaosClass{
		{Name: "route-del", CutsPath: true, Faults: 2, Lost: 7, Sent: 240, Heal: []time.Duration{time.Second, 2 * time.Second},
			Families: []FamilyEchoes{{Lost: 0, Sent: 120}, {IPv6: true, Lost: 7, Sent: 120}}},
		{Name: "neigh-del", CutsPath: true, Faults: 1, Lost: 3, Sent: 100, Collateral: 1, Heal: []time.Duration{time.Second},
			Families: []FamilyEchoes{{Lost: 1, Sent: 50, Collateral: 1}, {IPv6: true, Lost: 2, Sent: 50}}},
		{Name: "agent-kill", Faults: 1, Sent: 100, Heal: []time.Duration{3 * time.Second},
			Families: []FamilyEchoes{{Sent: 50}, {IPv6: true, Sent: 50}}},
		{Name: "fdb-del", CutsPath: true},
	}}
	var b strings.Builder
	r.Render(&b)
	want := "" +
		"FAULT             COUNT  UNHEALED         LOST/SENT   HEAL P50   HEAL MAX NOTE\n" +
		"route-del             2         0 v4 0/120 v6 7/120         1s         2s may lose packets on the family it cuts, while it is cut\n" +
		"neigh-del             1         0   v4 1/50 v6 2/50         1s         1s LOST 1 on IPv4, which it did not cut: a defect\n" +
		"agent-kill            1         0   v4 0/50 v6 0/50         3s         3s must lose none\n"
	if b.String() != want {
		t.Errorf("got\n%s\nwant\n%s", b.String(), want)
	}

	// One family: the table as it always was.
	one := ChaosReport{Classes: []ChaosClass{{Name: "route-del", CutsPath: true, Faults: 1, Lost: 3, Sent: 50, Heal: []time.Duration{time.Second},
		Families: []FamilyEchoes{{Lost: 3, Sent: 50}}}}}
	b.Reset()
	one.Render(&b)
	want = "" +
		"FAULT             COUNT  UNHEALED LOST/SENT   HEAL P50   HEAL MAX NOTE\n" +
		"route-del             1         0      3/50         1s         1s may lose packets while the path is cut\n"
	if b.String() != want {
		t.Errorf("got\n%s\nwant\n%s", b.String(), want)
	}
}

// Each kind of fault takes the lab's families in turn: two faults of a
// kind in a dual-stack lab cut one of each, whatever the seed.
func TestChaosFamilyTurns(t *testing.T) {
	for seed := range uint64(20) {
		c := &chaos{l: &Lab{State: State{IPFamily: IPFamilyDual}}, rnd: rand.New(rand.NewPCG(seed, seed)), turn: map[string]int{}}
		for _, kind := range []string{"route-del", "neigh-del"} {
			a, b, a2 := c.family(kind), c.family(kind), c.family(kind)
			if a == b || a2 != a {
				t.Errorf("seed %d %s: families %v %v %v, want alternating", seed, kind, a, b, a2)
			}
		}
	}
	for _, fam := range []string{IPFamilyIPv4, IPFamilyIPv6} {
		c := &chaos{l: &Lab{State: State{IPFamily: fam}}, rnd: rand.New(rand.NewPCG(1, 1)), turn: map[string]int{}}
		for range 3 {
			if v6 := c.family("route-del"); v6 != (fam == IPFamilyIPv6) {
				t.Errorf("%s lab: picked IPv6 %v", fam, v6)
			}
		}
	}
}

func TestRouteTo(t *testing.T) {
	p := netip.MustParsePrefix
	a := netip.MustParseAddr
	routes := []netlinkx.Route{
		{Dst: p("0.0.0.0/0"), Gw: a("192.0.2.254"), LinkIndex: 2},
		{Dst: p("10.244.1.0/24"), LinkIndex: 5}, // cni0, this node's own
		{Dst: p("10.244.0.0/16"), LinkIndex: 7}, // udp, wireguard: the whole network
		{Dst: p("10.244.3.0/24"), Gw: a("10.244.3.0"), LinkIndex: 6, OnLink: true},
	}
	net4 := p("10.244.0.0/16")
	for _, c := range []struct {
		dst  string
		want string
	}{
		{"10.244.3.0/24", "10.244.3.0/24"},
		{"10.244.2.0/24", "10.244.0.0/16"},
	} {
		if r, ok := routeTo(routes, p(c.dst), net4); !ok || r.Dst != p(c.want) {
			t.Errorf("route to %s: %v %v, want %s", c.dst, r.Dst, ok, c.want)
		}
	}
	if r, ok := routeTo(routes[:2], p("10.244.2.0/24"), net4); ok {
		t.Errorf("no route to 10.244.2.0/24 but the default: got %v", r.Dst)
	}
	r6 := []netlinkx.Route{
		{Dst: p("fd00:10:244:1::/64"), LinkIndex: 5},
		{Dst: p("fd00:10:244:2::/64"), Gw: a("2001:db8::2"), LinkIndex: 2},
	}
	if r, ok := routeTo(r6, p("fd00:10:244:2::/64"), p("fd00:10:244::/56")); !ok || r.Gw != a("2001:db8::2") {
		t.Errorf("IPv6 route: %v %v", r, ok)
	}
}

func TestParseEchoes(t *testing.T) {
	out := "PING fd00:10:244:2::2(fd00:10:244:2::2) 56 data bytes\n" +
		"[1796182856.560580] 64 bytes from fd00:10:244:2::2: icmp_seq=1 ttl=62 time=0.080 ms\n" +
		"[1796182856.66] no answer yet for icmp_seq=2\n" +
		// 3 unanswered, then answered late; 2 and 4 never.
		"[1796182856.764530] no answer yet for icmp_seq=3\n" +
		"[1796182856.864] no answer yet for icmp_seq=4\n" +
		"[1796182856.901] 64 bytes from fd00:10:244:2::2: icmp_seq=3 ttl=62 time=237 ms\n" +
		"[1796182856.964] From fd00:10:244:1::1 icmp_seq=5 Destination unreachable: No route\n"
	es := parseEchoes(out, true)
	var got []string
	for _, e := range es {
		got = append(got, fmt.Sprintf("%d.%03d lost=%v v6=%v", e.at.Unix(), e.at.Nanosecond()/1e6, e.lost, e.v6))
	}
	want := []string{
		"1796182856.560 lost=false v6=true",
		"1796182856.660 lost=true v6=true",
		"1796182856.764 lost=false v6=true", // late
		"1796182856.864 lost=true v6=true",
		"1796182856.964 lost=true v6=true",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("echoes\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestSelectFaults(t *testing.T) {
	all := []fault{{name: "agent-kill"}, {name: "route-del"}, {name: "device-del"}}
	got, err := selectFaults(all, []string{"device-del", "route-del"})
	if err != nil || len(got) != 2 || got[0].name != "device-del" || got[1].name != "route-del" {
		t.Errorf("selected %v, %v", got, err)
	}
	if got, _ := selectFaults(all, nil); len(got) != 3 {
		t.Errorf("no names: %d kinds, want all 3", len(got))
	}
	if _, err := selectFaults(all, []string{"fdb-del"}); err == nil || !strings.Contains(err.Error(), "agent-kill, route-del, device-del") {
		t.Errorf("unknown kind: %v", err)
	}
}

// Every hostile lease Chaos writes in a dual-stack lab is refused by the
// admission rules every agent applies, on the node it aims at and on the
// others: the kind loses no packet because nothing programs it, not by
// luck.
func TestChaosHostileLeasesRefused(t *testing.T) {
	s := plan(Options{Name: "t", Dir: t.TempDir(), Nodes: 3, PodsPerNode: 1, Backend: "vxlan", IPFamily: IPFamilyDual,
		IPv6Network: DefaultIPv6Network, Network: DefaultNetwork, Store: StoreEtcd, EtcdMembers: 1, IPMasq: new(bool)})
	for i := range s.Nodes {
		s.Nodes[i].Subnet = netip.MustParsePrefix(fmt.Sprintf("10.244.%d.1/24", 10*(i+1)))
		s.Nodes[i].Subnet6 = netip.MustParsePrefix(fmt.Sprintf("fd00:10:244:%x::1/64", 10*(i+1)))
	}
	n, _, err := config.Parse([]byte(s.networkConfig()))
	if err != nil {
		t.Fatal(err)
	}
	l := &Lab{State: s}
	leaseOf := func(nd Node) lease.Lease {
		pub6 := nd.PublicIPv6
		return lease.Lease{Subnet: nd.Subnet.Masked(), IPv6Subnet: nd.Subnet6.Masked(), Attrs: lease.Attrs{PublicIP: nd.PublicIP, PublicIPv6: &pub6, BackendType: "vxlan"}}
	}
	seen := map[string]bool{}
	for seed := range uint64(200) {
		c := &chaos{l: l, rnd: rand.New(rand.NewPCG(seed, seed)), turn: map[string]int{}}
		target := &l.Nodes[seed%3]
		h := c.hostileLease(target)
		seen[h.what] = true
		v4, v6, err := lease.ParseKey(h.key)
		if err != nil {
			t.Fatalf("%s: %v", h.key, err)
		}
		attrs, err := lease.UnmarshalAttrs([]byte(h.value))
		if err != nil {
			t.Fatalf("%s: %v", h.value, err)
		}
		bad := lease.Lease{Subnet: v4, IPv6Subnet: v6, Attrs: attrs}
		for _, own := range l.Nodes {
			nodes := map[string]lease.Lease{}
			for _, o := range l.Nodes {
				nodes[leaseOf(o).Key()] = leaseOf(o)
			}
			all := maps.Clone(nodes)
			all[bad.Key()] = bad
			// The nodes' leases were there first, as in a running lab.
			var set admit.Set
			set.Reset(n, leaseOf(own), nodes)
			admitted, _ := set.Reset(n, leaseOf(own), all)
			for _, a := range admitted {
				if a.Key() == bad.Key() {
					t.Errorf("node %d admits hostile lease %s (%s) aimed at node %d", own.Index, h.key, h.what, target.Index)
				}
			}
		}
	}
	if len(seen) != 6 {
		t.Errorf("%d kinds of hostile lease made, want 6 (4 IPv4, 2 IPv6): %v", len(seen), seen)
	}
}
