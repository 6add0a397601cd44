package doctor

import (
	"strings"
	"testing"
	"time"
)

// weft status's view of a dual-stack node: every lease judged over both
// families by the IPv6 datapath checks, each IPv6 object a lease lacks
// named with its family.
func TestClusterViewIPv6(t *testing.T) {
	v := ClusterView(healthyDual())
	if !v.Programmed || !v.ProgrammedIPv6 || v.Own6 != pfx("fd00:10:244:1::/64") {
		t.Fatalf("healthy dual stack: programmed %v, IPv6 %v, own6 %v", v.Programmed, v.ProgrammedIPv6, v.Own6)
	}
	if len(v.Leases) != 2 || !v.Leases[0].Own || v.Leases[1].Missing != "" || v.Leases[1].PublicIPv6 != addr("2001:db8::2") {
		t.Fatalf("healthy dual stack: leases %+v", v.Leases)
	}

	tests := []struct {
		name    string
		break_  func(*Facts)
		missing string
	}{
		{"IPv6 route", func(f *Facts) { f.Node.IPv6.Routes = f.Node.IPv6.Routes[:3] }, "IPv6 route"},
		{"IPv6 neighbour", func(f *Facts) { f.Node.IPv6.Neighs = nil }, "IPv6 neighbour entry"},
		{"IPv6 FDB entry", func(f *Facts) { f.Node.IPv6.FDB = nil }, "IPv6 fdb entry"},
		{"IPv6 FDB entry to the wrong node", func(f *Facts) { f.Node.IPv6.FDB[0].Dst = addr("2001:db8::99") }, "IPv6 fdb entry"},
		{"both families' routes", func(f *Facts) {
			f.Node.IPv6.Routes = f.Node.IPv6.Routes[:3]
			f.Node.Routes = f.Node.Routes[:2]
		}, "route, IPv6 route"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := healthyDual()
			tt.break_(&f)
			v := ClusterView(f)
			if got := v.Leases[1].Missing; got != tt.missing || !v.ProgrammedIPv6 {
				t.Errorf("missing %q (IPv6 checked %v), want %q", got, v.ProgrammedIPv6, tt.missing)
			}
		})
	}

	// No flannel-v6.1: the IPv6 routes could not be compared.
	f := healthyDual()
	f.Node.Links = f.Node.Links[:len(f.Node.Links)-1]
	if v := ClusterView(f); v.ProgrammedIPv6 || !v.Programmed {
		t.Errorf("no IPv6 device: programmed %v, IPv6 %v; want IPv4 only", v.Programmed, v.ProgrammedIPv6)
	}

	// wireguard: one route to the IPv6 network; without it every peer
	// lacks its IPv6 route to the network.
	f = healthyWGDual("")
	f.Node.IPv6.Routes = f.Node.IPv6.Routes[:3]
	if v := ClusterView(f); v.Leases[1].Missing != "IPv6 route to the network" || !v.ProgrammedIPv6 {
		t.Errorf("wireguard IPv6 route gone: missing %q, IPv6 checked %v", v.Leases[1].Missing, v.ProgrammedIPv6)
	}
}

// Probes of a dual-stack node: each peer over each family, the IPv6 one
// through flannel-v6.1 from this node's IPv6 address, sized to that
// device; --max-peers counts peers, not families.
func TestPlanProbesIPv6(t *testing.T) {
	f := healthyDual()
	targets, _, _ := PlanProbes(f, ProbeOptions{})
	if len(targets) != 2 {
		t.Fatalf("targets %+v, want the peer over IPv4 and over IPv6", targets)
	}
	t4, t6 := targets[0], targets[1]
	if t4.IPv6 || t4.PublicIP != addr("192.0.2.2") || t4.Overlay != addr("10.244.2.0") {
		t.Errorf("IPv4 target %+v", t4)
	}
	if !t6.IPv6 || t6.Key != "10.244.2.0-24&fd00:10:244:2::-64" || t6.Subnet != pfx("fd00:10:244:2::/64") || t6.PublicIP != addr("2001:db8::2") ||
		t6.Overlay != addr("fd00:10:244:2::") || t6.Source != addr("fd00:10:244:1::") || t6.MTU != 1430 || t6.Port != 8472 {
		t.Errorf("IPv6 target %+v", t6)
	}
	if targets, unmatched, _ := PlanProbes(f, ProbeOptions{Peers: []string{"2001:db8::2"}}); len(targets) != 2 || len(unmatched) != 0 {
		t.Errorf("--peers by PublicIPv6: targets %+v, unmatched %v", targets, unmatched)
	}
	f.Store.Leases = append(f.Store.Leases, RawLease{Key: "10.244.3.0-24&fd00:10:244:3::-64", LeaseID: 0x13, TTL: time.Hour,
		Value: []byte(`{"PublicIP":"192.0.2.3","PublicIPv6":"2001:db8::3","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"aa:00:00:00:00:03"},"BackendV6Data":{"VNI":1,"VtepMAC":"aa:00:00:00:06:03"}}`)})
	if targets, _, notProbed := PlanProbes(f, ProbeOptions{Max: 1}); len(targets) != 2 || notProbed != 1 || targets[1].PublicIP != addr("2001:db8::2") {
		t.Errorf("--max-peers 1: targets %+v, %d not probed", targets, notProbed)
	}

	// host-gw: the peer's cni0 gateway, via the underlay.
	f = healthyDual()
	f.Store.Config = []byte(`{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10:244::/56","Backend":{"Type":"host-gw"}}`)
	f.Node.Links[len(f.Node.Links)-2].Addrs = append(f.Node.Links[len(f.Node.Links)-2].Addrs, pfx("fd00:10:244:1::1/64")) // cni0
	targets, _, _ = PlanProbes(f, ProbeOptions{})
	if len(targets) != 2 || targets[1].Overlay != addr("fd00:10:244:2::1") || targets[1].Source != addr("fd00:10:244:1::1") || targets[1].MTU != 1500 {
		t.Errorf("host-gw IPv6 target: %+v", targets)
	}
}

// A lost IPv6 probe blames what this node lacks of IPv6 only; an IPv4
// probe is not blamed on a missing IPv6 route. The verdicts land in the
// lease's view by family.
func TestPeerVerdictsIPv6(t *testing.T) {
	ok := ping(3, 3, 400*time.Microsecond)
	f := healthyDual()
	targets, _, _ := PlanProbes(f, ProbeOptions{})
	f.Node.IPv6.Routes = f.Node.IPv6.Routes[:3] // the IPv6 route to the peer
	lost := func(t ProbeTarget) Ping { p := ping(3, 0, 0); p.Dst = t.Overlay; return p }
	f.Probe = &ProbeFacts{Peers: []PeerProbe{
		{Target: targets[0], Underlay: ok, Overlay: lost(targets[0])},
		{Target: targets[1], Underlay: ok, Overlay: lost(targets[1])},
	}}
	var peers []Result
	for _, r := range Evaluate(f).Results {
		if r.Check == "peer" {
			peers = append(peers, r)
		}
	}
	if len(peers) != 2 {
		t.Fatalf("peer results %+v", peers)
	}
	if m := peers[0].Message; peers[0].Status != Fail || strings.Contains(m, "lacks") || !strings.Contains(m, "VXLAN (UDP 8472) to 192.0.2.2 dropped") {
		t.Errorf("IPv4 probe: %s %q", peers[0].Status, m)
	}
	want := "2001:db8::2 (fd00:10:244:2::/64): fd00:10:244:2:: through VXLAN over IPv6 (UDP 8472) lost: this node lacks its IPv6 route"
	if peers[1].Status != Fail || peers[1].Message != want {
		t.Errorf("IPv6 probe: %s %q, want %q", peers[1].Status, peers[1].Message, want)
	}
	v := ClusterView(f)
	l := v.Leases[1]
	if l.Probe == nil || l.ProbeIPv6 == nil || l.ProbeIPv6.Message != want || l.Probe.Message == want {
		t.Errorf("lease view probes: IPv4 %+v, IPv6 %+v", l.Probe, l.ProbeIPv6)
	}
}

// The kernel refuses the IPv6 probe (no route at all): the verdict says
// so and names what this node lacks.
func TestPeerVerdictNoRouteIPv6(t *testing.T) {
	f := healthyDual()
	targets, _, _ := PlanProbes(f, ProbeOptions{})
	f.Node.IPv6.Routes = f.Node.IPv6.Routes[:3]
	f.Probe = &ProbeFacts{Peers: []PeerProbe{{Target: targets[1], Underlay: ping(3, 3, time.Millisecond),
		Overlay: Ping{Dst: targets[1].Overlay, Sent: 3, Err: "no route"}}}}
	r, _ := find(Evaluate(f), "peer")
	want := "fd00:10:244:2:: through VXLAN over IPv6 (UDP 8472) fails on this node: no route: this node lacks its IPv6 route"
	if r.Status != Fail || !strings.Contains(r.Message, want) || !strings.Contains(r.Hint, "see routes-v6") {
		t.Errorf("got %s %q (hint %q), want %q", r.Status, r.Message, r.Hint, want)
	}
}
