package doctor

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	udpbackend "github.com/weft-net/weft/internal/backend/udp"
	"github.com/weft-net/weft/internal/netlinkx"
)

func ping(sent, recv int, rtt time.Duration) Ping {
	return Ping{Sent: sent, Received: recv, RTT: rtt, Size: 84}
}

func peerFacts(p PeerProbe) Facts {
	f := healthy()
	p.Target = ProbeTarget{Key: "10.244.2.0-24", Subnet: pfx("10.244.2.0/24"), PublicIP: addr("192.0.2.2"), Overlay: addr("10.244.2.0"), Backend: "vxlan", Port: 8472, MTU: 1450}
	f.Probe = &ProbeFacts{Peers: []PeerProbe{p}}
	return f
}

func TestPeerVerdicts(t *testing.T) {
	ok := ping(3, 3, 400*time.Microsecond)
	full := Ping{Sent: 3, Received: 3, RTT: time.Millisecond, Size: 1450}
	tests := []struct {
		name   string
		p      PeerProbe
		mutate func(*Facts)
		status Status
		want   string
	}{
		{"healthy", PeerProbe{Underlay: ok, Overlay: ok, Full: full}, nil, OK,
			"192.0.2.2 (10.244.2.0/24): underlay 0.40 ms, vxlan 0.40 ms, 1450-byte DF 1.00 ms"},
		{"underlay down", PeerProbe{Underlay: ping(3, 0, 0)}, nil, Fail, "underlay to 192.0.2.2 unreachable (3 of 3 lost)"},
		{"tunnel blocked", PeerProbe{Underlay: ok, Overlay: ping(3, 0, 0)}, nil, Fail,
			"VXLAN (UDP 8472) to 192.0.2.2 dropped: the underlay passes ICMP but not the tunnel — check firewalls and security groups"},
		{"MTU black hole", PeerProbe{Underlay: ok, Overlay: ok, Full: Ping{Sent: 3, Size: 1450}, Largest: 1400}, nil, Fail,
			"MTU black hole to 192.0.2.2: 1450-byte packets do not cross, 1400 do"},
		{"no route here", PeerProbe{Underlay: ok, Overlay: Ping{Sent: 3, Err: "no route"}}, nil, Fail, "fails on this node: no route"},
		{"route missing here", PeerProbe{Underlay: ok, Overlay: ping(3, 0, 0)}, func(f *Facts) { f.Node.Routes = f.Node.Routes[:2] }, Fail,
			"this node lacks its route"},
		{"loss", PeerProbe{Underlay: ok, Overlay: ping(3, 2, time.Millisecond), Full: full}, nil, Warn, "33% loss"},
		{"no socket", PeerProbe{Err: "ICMP socket: permission denied"}, nil, Warn, "not probed: ICMP socket"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := peerFacts(tt.p)
			if tt.mutate != nil {
				tt.mutate(&f)
			}
			r, found := find(Evaluate(f), "peer")
			if !found {
				t.Fatal("no peer result")
			}
			if r.Status != tt.status || !strings.Contains(r.Message, tt.want) {
				t.Errorf("got %s %q (hint %q), want %s with %q", r.Status, r.Message, r.Hint, tt.status, tt.want)
			}
		})
	}
	t.Run("udp agent down", func(t *testing.T) {
		f := peerFacts(PeerProbe{Underlay: ok, Overlay: ping(3, 0, 0)})
		f.Probe.Peers[0].Target.Backend, f.Probe.Peers[0].Target.Port = "udp", 8285
		r, _ := find(Evaluate(f), "peer")
		if r.Status != Fail || !strings.Contains(r.Message, "peer's agent not answering on its subnet") || !strings.Contains(r.Hint, "UDP 8285") {
			t.Errorf("got %s %q %q", r.Status, r.Message, r.Hint)
		}
	})
}

func TestPlanProbes(t *testing.T) {
	f := healthy()
	f.Store.Leases = append(f.Store.Leases,
		RawLease{Key: "10.244.3.0-24", Value: vxlanValue("192.0.2.3", mac3), LeaseID: 0x13, TTL: time.Hour},
		RawLease{Key: "10.244.9.0-24", Value: vxlanValue("192.0.2.1", mac3), LeaseID: 0x14, TTL: time.Hour}, // a stale lease of this node
	)
	targets, unmatched, notProbed := PlanProbes(f, ProbeOptions{})
	if len(targets) != 2 || len(unmatched) != 0 || notProbed != 0 {
		t.Fatalf("targets %+v unmatched %v notProbed %d", targets, unmatched, notProbed)
	}
	t0 := targets[0]
	if t0.PublicIP != addr("192.0.2.2") || t0.Overlay != addr("10.244.2.0") || t0.Source != addr("10.244.1.0") || t0.MTU != 1450 || t0.Port != 8472 {
		t.Errorf("target %+v", t0)
	}
	targets, unmatched, _ = PlanProbes(f, ProbeOptions{Peers: []string{"192.0.2.3", "10.244.7.0/24"}})
	if len(targets) != 1 || targets[0].PublicIP != addr("192.0.2.3") || len(unmatched) != 1 || unmatched[0] != "10.244.7.0/24" {
		t.Errorf("--peers: targets %+v unmatched %v", targets, unmatched)
	}
	targets, _, notProbed = PlanProbes(f, ProbeOptions{Max: 1})
	if len(targets) != 1 || notProbed != 1 {
		t.Errorf("--max-peers 1: %d targets, %d not probed", len(targets), notProbed)
	}
}

func TestKernelLimits(t *testing.T) {
	udp := func() Facts {
		f := healthy()
		f.Store.Config = []byte(`{"Network":"10.244.0.0/16","Backend":{"Type":"udp"}}`)
		return f
	}
	const udpSocketBuffer = udpbackend.SocketBuffer
	// sock_diag reports twice the size a socket was given.
	sock := func(port uint16, size int) netlinkx.UDPSocket {
		return netlinkx.UDPSocket{Local: netip.AddrPortFrom(netip.IPv4Unspecified(), port), RcvBuf: 2 * size, SndBuf: 2 * size}
	}
	wgUser := func() Facts {
		f := healthyWGDual("")
		f.Node.Sysctls["net/core/rmem_max"], f.Node.Sysctls["net/core/wmem_max"] = "212992", "212992"
		return f
	}
	wgKernel := func() Facts {
		f := wgUser()
		for i := range f.Node.Links {
			if strings.HasPrefix(f.Node.Links[i].Name, "flannel-wg") {
				f.Node.Links[i].Kind = "wireguard"
			}
		}
		f.Node.DatapathSockets = []netlinkx.UDPSocket{sock(51820, 212992)}
		return f
	}
	for _, c := range []struct {
		name    string
		facts   func() Facts
		rmem    string
		sockets []netlinkx.UDPSocket
		status  Status
		want    []string // in the message or the hint
	}{
		{"udp, no socket, rmem_max low", udp, "212992", nil, Warn,
			[]string{"rmem_max is below the 7340032 bytes the udp datapath asks for", "unless weftd has CAP_NET_ADMIN", "no weftd socket on UDP 8285", "sysctl -w net.core.rmem_max=7340032"}},
		{"udp, no socket, rmem_max enough", udp, "7340032", nil, OK,
			[]string{"net.core.rmem_max = 7340032, wmem_max = 7340032 ≥ the 7340032 bytes the udp datapath asks for"}},
		{"udp, forced past a low rmem_max", udp, "212992", []netlinkx.UDPSocket{sock(8285, udpSocketBuffer)}, OK,
			[]string{"weftd's socket on UDP 8285 got 7340032-byte receive and 7340032-byte send buffers", "net.core.rmem_max = 212992, wmem_max = 7340032 does not cap them", "CAP_NET_ADMIN"}},
		{"udp, capped by rmem_max", udp, "212992", []netlinkx.UDPSocket{sock(8285, 212992)}, Warn,
			[]string{"got 212992-byte receive", "below the 7340032 the udp datapath asks for", "rmem_max = 212992", "lacks CAP_NET_ADMIN", "sysctl -w net.core.rmem_max=7340032"}},
		{"wireguard-go, capped", wgUser, "212992", []netlinkx.UDPSocket{sock(51820, 212992), sock(51821, 212992)}, Warn,
			[]string{"weftd's sockets on UDP 51820, 51821 got 212992-byte", "wireguard-go asks for", "sysctl -w net.core.rmem_max=7340032"}},
		{"wireguard-go, forced", wgUser, "212992", []netlinkx.UDPSocket{sock(51820, udpSocketBuffer), sock(51821, udpSocketBuffer)}, OK,
			[]string{"got 7340032-byte receive", "the 7340032 wireguard-go asks for", "does not cap them"}},
		{"wireguard-go, one socket capped", wgUser, "212992", []netlinkx.UDPSocket{sock(51820, udpSocketBuffer), sock(51821, 212992)}, Warn,
			[]string{"got 212992-byte receive"}},
		{"wireguard-go, no socket", wgUser, "212992", nil, Warn,
			[]string{"wireguard-go asks for", "no weftd socket on UDP 51820, 51821"}},
	} {
		f := c.facts()
		f.Node.Sysctls["net/core/rmem_max"] = c.rmem
		f.Node.DatapathSockets = c.sockets
		r, found := find(Evaluate(f), "socket-buffers")
		text := r.Message + " | " + r.Hint
		if !found || r.Status != c.status {
			t.Errorf("%s: socket-buffers %v %s, want %s: %s", c.name, found, r.Status, c.status, text)
		}
		for _, w := range c.want {
			if !strings.Contains(text, w) {
				t.Errorf("%s: %q missing from %s", c.name, w, text)
			}
		}
		if r.Status == OK && r.Hint != "" {
			t.Errorf("%s: ok with a hint", c.name)
		}
	}
	for name, f := range map[string]Facts{"vxlan": healthy(), "kernel wireguard": wgKernel()} {
		if r, found := find(Evaluate(f), "socket-buffers"); found {
			t.Errorf("socket-buffers checked for %s, which receives in the kernel: %s", name, r.Message)
		}
	}
	for _, c := range []struct {
		count  string
		status Status
	}{{"100", OK}, {"800", Warn}, {"950", Fail}} {
		f := healthy()
		f.Node.Sysctls["net/netfilter/nf_conntrack_count"] = c.count
		f.Node.Sysctls["net/netfilter/nf_conntrack_max"] = "1000"
		r, _ := find(Evaluate(f), "conntrack")
		if r.Status != c.status || (c.status != OK && !strings.Contains(r.Hint, "sysctl -w net.netfilter.nf_conntrack_max=2000")) {
			t.Errorf("conntrack %s/1000: %s %q %q", c.count, r.Status, r.Message, r.Hint)
		}
	}
}

// TestLargestCrossing runs the MTU search against every path MTU a
// search can meet, for both families' sizes: it finds the largest size
// that crosses, sends each size once with its own sequence number, and
// stays within a binary search's steps.
func TestLargestCrossing(t *testing.T) {
	for _, c := range []struct{ small, floor, mtu int }{
		{smallProbe, minProbeSize, 1450}, // IPv4 vxlan
		{smallProbe, minProbeSize, 1472}, // IPv4 udp
		{smallProbe6, minProbeSize6, 1430},
		{smallProbe6, minProbeSize6, 1280}, // the floor is the device's MTU
		{smallProbe6, minProbeSize6, 1200},
	} {
		bound := 1 // the floor
		for n := c.mtu - c.small; n > 1; n = (n + 1) / 2 {
			bound++
		}
		for m := c.small; m < c.mtu; m++ {
			sent := map[int]bool{}
			seqs := map[uint16]bool{}
			got := largestCrossing(c.small, c.floor, c.mtu, func(size int, seq uint16) bool {
				if size <= c.small || size >= c.mtu || sent[size] || seqs[seq] || seq < 3 {
					t.Errorf("%+v, path MTU %d: probe of %d bytes, seq %d (sent %v)", c, m, size, seq, sent)
				}
				sent[size], seqs[seq] = true, true
				return size <= m
			})
			if got != m || len(sent) > bound {
				t.Fatalf("%+v, path MTU %d: found %d after %d probes (bound %d)", c, m, got, len(sent), bound)
			}
		}
	}
}

// TestProbeBackends plans the probes of host-gw and wireguard nodes and
// judges what probing the planned targets could find: each backend's
// hop goes to its own address (host-gw the peer's cni0 gateway, wireguard
// the peer's device through its listen port) and a lost probe is named
// for that backend, with its fix.
func TestProbeBackends(t *testing.T) {
	ok := ping(3, 3, 400*time.Microsecond)
	lost := ping(3, 0, 0)
	type verdict struct {
		p      PeerProbe
		status Status
		msg    string
		hint   []string
	}
	for _, c := range []struct {
		name     string
		facts    func() Facts
		targets  []ProbeTarget
		verdicts [][]verdict // per target
	}{
		{
			name: "host-gw", facts: healthyHostGW,
			targets: []ProbeTarget{{Key: "10.244.2.0-24", Subnet: pfx("10.244.2.0/24"), PublicIP: addr("192.0.2.2"), Overlay: addr("10.244.2.1"), Source: addr("10.244.1.1"), Backend: "host-gw", MTU: 1500}},
			verdicts: [][]verdict{{
				{PeerProbe{Underlay: ok, Overlay: ok, Full: Ping{Sent: 3, Received: 3, RTT: time.Millisecond, Size: 1500}}, OK,
					"192.0.2.2 (10.244.2.0/24): underlay 0.40 ms, host-gw 0.40 ms, 1500-byte DF 1.00 ms", nil},
				{PeerProbe{Underlay: ok, Overlay: lost}, Fail,
					"peer's agent not answering on its subnet: gateway 10.244.2.1 via 192.0.2.2 (host-gw) did not answer",
					[]string{"on 192.0.2.2: is weftd running, cni0 up with 10.244.2.1", "ip_forward on?", "one L2 segment"}},
			}},
		},
		{
			name: "wireguard", facts: func() Facts { return healthyWGDual("") },
			targets: []ProbeTarget{
				{Key: "10.244.2.0-24&fd00:10:244:2::-64", Subnet: pfx("10.244.2.0/24"), PublicIP: addr("192.0.2.2"), Overlay: addr("10.244.2.0"), Source: addr("10.244.1.0"), Backend: "wireguard", Port: 51820, MTU: 1420},
				{Key: "10.244.2.0-24&fd00:10:244:2::-64", Subnet: pfx("fd00:10:244:2::/64"), PublicIP: addr("2001:db8::2"), Overlay: addr("fd00:10:244:2::"), Source: addr("fd00:10:244:1::"), Backend: "wireguard", Port: 51821, MTU: 1420, IPv6: true},
			},
			verdicts: [][]verdict{
				{
					{PeerProbe{Underlay: ok, Overlay: ok, Full: Ping{Sent: 3, Received: 3, RTT: time.Millisecond, Size: 1420}}, OK,
						"192.0.2.2 (10.244.2.0/24): underlay 0.40 ms, wireguard 0.40 ms, 1420-byte DF 1.00 ms", nil},
					{PeerProbe{Underlay: ok, Overlay: lost}, Fail,
						"WireGuard (UDP 51820) to 192.0.2.2: no answer through the tunnel while the underlay passes ICMP — a firewall drops it, or the keys do not match",
						[]string{"allow UDP 51820 between the nodes", "`wg show flannel-wg` on both nodes"}},
				},
				{
					{PeerProbe{Underlay: ok, Overlay: lost}, Fail,
						"WireGuard over IPv6 (UDP 51821) to 2001:db8::2: no answer through the tunnel",
						[]string{"allow UDP 51821 between the nodes", "`wg show flannel-wg-v6` on both nodes"}},
				},
			},
		},
	} {
		f := c.facts()
		targets, _, _ := PlanProbes(f, ProbeOptions{})
		if len(targets) != len(c.targets) {
			t.Fatalf("%s: targets %+v, want %+v", c.name, targets, c.targets)
		}
		for i, tg := range targets {
			if tg != c.targets[i] {
				t.Errorf("%s: target %d\n got %+v\nwant %+v", c.name, i, tg, c.targets[i])
			}
			for _, v := range c.verdicts[i] {
				g := c.facts()
				// As the pinger fills them in.
				v.p.Target, v.p.Underlay.Dst, v.p.Overlay.Dst = tg, tg.PublicIP, tg.Overlay
				g.Probe = &ProbeFacts{Peers: []PeerProbe{v.p}}
				r, found := find(Evaluate(g), "peer")
				if !found || r.Status != v.status || !strings.HasPrefix(r.Message, v.msg) {
					t.Errorf("%s: %+v: got %s %q, want %s %q", c.name, v.p, r.Status, r.Message, v.status, v.msg)
				}
				for _, h := range v.hint {
					if !strings.Contains(r.Hint, h) {
						t.Errorf("%s: %q: %q missing from the hint %q", c.name, v.msg, h, r.Hint)
					}
				}
			}
		}
	}
}
