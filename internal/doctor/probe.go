package doctor

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/weft-net/weft/internal/backend/wireguard"
	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/lease"
)

// Probe defaults: every peer up to DefaultMaxPeers, DefaultParallel at a
// time, three echoes per hop, a second to answer.
const (
	DefaultMaxPeers     = 256
	DefaultParallel     = 32
	DefaultProbeCount   = 3
	DefaultProbeTimeout = time.Second
)

// ProbeOptions say which peers doctor probes and how hard.
type ProbeOptions struct {
	// Peers chooses peers by public IP, subnet, lease key or node name;
	// empty means every remote lease.
	Peers []string
	// Max bounds the peers probed; the rest are counted as not probed.
	Max int
	// Parallel bounds the peers probed at once.
	Parallel int
	// Count is the echoes sent per hop.
	Count int
	// Timeout is how long a hop's echoes are waited for.
	Timeout time.Duration
}

func (o ProbeOptions) withDefaults() ProbeOptions {
	if o.Max <= 0 {
		o.Max = DefaultMaxPeers
	}
	if o.Parallel <= 0 {
		o.Parallel = DefaultParallel
	}
	if o.Count <= 0 {
		o.Count = DefaultProbeCount
	}
	if o.Timeout <= 0 {
		o.Timeout = DefaultProbeTimeout
	}
	return o
}

// ProbeTarget is one remote lease to probe, with what each hop sends to.
type ProbeTarget struct {
	Key      string       `json:"key"`
	Node     string       `json:"node,omitempty"` // the Node's name, with the Kubernetes store
	Subnet   netip.Prefix `json:"subnet"`
	PublicIP netip.Addr   `json:"publicIP"` // the underlay hop
	// Overlay is the peer's address through the backend: the remote
	// flannel.<VNI> (vxlan) or flannel0 (udp) address, the subnet's
	// network address; for host-gw the subnet's gateway on the peer's
	// cni0. Invalid when the backend has none to probe.
	Overlay netip.Addr `json:"overlay,omitzero"`
	// Source is this node's address on the same backend, so the reply
	// comes back through the overlay too; invalid: the kernel chooses.
	Source  netip.Addr `json:"source,omitzero"`
	Backend string     `json:"backend"`
	Port    int        `json:"port,omitempty"` // the tunnel's UDP port
	// MTU is the pod MTU, the size of the don't-fragment probe; 0 skips it.
	MTU int `json:"mtu,omitempty"`
	// IPv6 says the target is the lease's IPv6 half: Subnet, PublicIP
	// (its PublicIPv6), Overlay and Source are IPv6 addresses, and MTU is
	// that of the backend's IPv6 device.
	IPv6 bool `json:"ipv6,omitempty"`
}

// ProbeFacts are the probes doctor ran.
type ProbeFacts struct {
	Options ProbeOptions
	// Unmatched are --peers entries no remote lease answers to.
	Unmatched []string
	// NotProbed counts remote leases left out by Options.Max.
	NotProbed int
	Peers     []PeerProbe
	Took      time.Duration
}

// PeerProbe is what probing one peer found, hop by hop; a hop not run
// (an earlier one failed) has Sent 0.
type PeerProbe struct {
	Target   ProbeTarget `json:"target"`
	Err      string      `json:"error,omitempty"` // the probe could not run (no ICMP socket)
	Underlay Ping        `json:"underlay"`
	Overlay  Ping        `json:"overlay"`
	Full     Ping        `json:"full"` // pod MTU, don't fragment
	// Largest is the largest don't-fragment packet found to cross when
	// Full lost every echo; 0 when none did or it was not searched.
	Largest int `json:"largest,omitempty"`
}

// Ping is one hop's echoes.
type Ping struct {
	Dst      netip.Addr    `json:"dst,omitzero"`
	Size     int           `json:"size,omitempty"` // IP packet size
	Sent     int           `json:"sent"`
	Received int           `json:"received"`
	RTT      time.Duration `json:"rtt,omitempty"` // mean of the replies
	// Err is the first send error (no route, message too long).
	Err string `json:"error,omitempty"`
}

// Loss is the share of echoes lost, 0..1.
func (p Ping) Loss() float64 {
	if p.Sent == 0 {
		return 0
	}
	return float64(p.Sent-p.Received) / float64(p.Sent)
}

func (p Ping) lostAll() bool { return p.Sent > 0 && p.Received == 0 }

// PlanProbes picks the peers to probe from what the checks make of f:
// every remote lease (those o.Peers names, when given), in key order, at
// most o.Max; a lease with both families is probed over each, its IPv4
// target first.
func PlanProbes(f Facts, o ProbeOptions) (targets []ProbeTarget, unmatched []string, notProbed int) {
	o = o.withDefaults()
	e := evaluate(f)
	return e.probeTargets(o)
}

func (e *eval) probeTargets(o ProbeOptions) (targets []ProbeTarget, unmatched []string, notProbed int) {
	used := make([]bool, len(o.Peers))
	var peers [][]ProbeTarget // each lease's targets, one per family
	for _, l := range e.leases {
		if e.own.IsValid() && l.Subnet == e.own || e.own6.IsValid() && l.IPv6Subnet == e.own6 {
			continue
		}
		var ts []ProbeTarget
		if ip := l.Attrs.PublicIP; l.Subnet.IsValid() && ip.IsValid() && !ip.IsUnspecified() && ip != e.pubIP {
			ts = append(ts, e.target(l))
		}
		if t, ok := e.target6(l); ok {
			ts = append(ts, t)
		}
		if len(ts) == 0 {
			continue // no address to probe, or a stale lease of this node
		}
		if len(o.Peers) > 0 {
			hit := false
			for i, p := range o.Peers {
				if slices.ContainsFunc(ts, func(t ProbeTarget) bool { return t.matches(p) }) {
					used[i], hit = true, true
				}
			}
			if !hit {
				continue
			}
		}
		peers = append(peers, ts)
	}
	for i, p := range o.Peers {
		if !used[i] {
			unmatched = append(unmatched, p)
		}
	}
	slices.SortFunc(peers, func(a, b []ProbeTarget) int { return a[0].Subnet.Addr().Compare(b[0].Subnet.Addr()) })
	if len(peers) > o.Max {
		notProbed = len(peers) - o.Max
		peers = peers[:o.Max]
	}
	for _, ts := range peers {
		targets = append(targets, ts...)
	}
	return targets, unmatched, notProbed
}

func (t ProbeTarget) matches(p string) bool {
	p = strings.TrimSpace(p)
	if a, err := netip.ParseAddr(p); err == nil {
		return a == t.PublicIP || t.Subnet.Contains(a)
	}
	if s, err := netip.ParsePrefix(p); err == nil {
		return s.Masked() == t.Subnet
	}
	return p == t.Key || (t.Node != "" && p == t.Node)
}

// target6 is the IPv6 half of lease l to probe, when the network and the
// backend carry IPv6 and l has an IPv6 subnet and PublicIPv6 (not this
// node's).
func (e *eval) target6(l lease.Lease) (ProbeTarget, bool) {
	if e.net == nil || !e.net.EnableIPv6 || !l.IPv6Subnet.IsValid() || l.Attrs.PublicIPv6 == nil {
		return ProbeTarget{}, false
	}
	pub := *l.Attrs.PublicIPv6
	if !pub.IsValid() || pub.IsUnspecified() || pub == e.pubIP6() {
		return ProbeTarget{}, false
	}
	t := ProbeTarget{Key: l.Key(), Node: e.nodeOf[leaseKey(l)], Subnet: l.IPv6Subnet, PublicIP: pub, Backend: e.net.Backend.Type, IPv6: true}
	local := func(a netip.Addr) netip.Addr {
		if e.linkHolding(a) != nil {
			return a
		}
		return netip.Addr{}
	}
	var via netip.Addr // this node's end of the overlay
	switch t.Backend {
	case config.BackendVXLAN, config.BackendWireGuard:
		// The peer's IPv6 device holds its IPv6 subnet's network address.
		t.Overlay, via = lease.SubnetIP(l.IPv6Subnet), lease.SubnetIP(e.own6)
		t.Port = e.net.Backend.Port
		if t.Backend == config.BackendWireGuard {
			// Peers are dialled over IPv6 on ListenPortV6, in every mode (flannel's).
			t.Port = e.net.Backend.ListenPortV6
		}
		if d := e.link(DeviceNameV6(e.net)); d != nil {
			t.MTU = d.MTU
		}
	case config.BackendHostGW:
		t.Overlay, via = lease.FirstIP(l.IPv6Subnet), lease.FirstIP(e.own6)
		t.MTU, _ = e.podMTU()
	default:
		return ProbeTarget{}, false // udp carries IPv4 only
	}
	if e.own6.IsValid() {
		t.Source = local(via)
	}
	if t.MTU == 0 && e.env != nil {
		t.MTU = e.env.MTU
	}
	return t, true
}

func (e *eval) target(l lease.Lease) ProbeTarget {
	t := ProbeTarget{Key: l.Key(), Node: e.nodeOf[l.Subnet], Subnet: l.Subnet, PublicIP: l.Attrs.PublicIP}
	if e.net == nil {
		return t
	}
	t.Backend = e.net.Backend.Type
	local := func(a netip.Addr) netip.Addr {
		if e.linkHolding(a) != nil {
			return a
		}
		return netip.Addr{}
	}
	switch t.Backend {
	case config.BackendVXLAN, config.BackendUDP, config.BackendWireGuard:
		// The peer's device holds its subnet's network address.
		t.Overlay = lease.SubnetIP(l.Subnet)
		t.Port = e.net.Backend.Port
		if t.Backend == config.BackendWireGuard {
			t.Port = e.net.Backend.ListenPort
		}
		if e.own.IsValid() {
			t.Source = local(lease.SubnetIP(e.own))
		}
	case config.BackendHostGW:
		t.Overlay = lease.FirstIP(l.Subnet)
		if e.own.IsValid() {
			t.Source = local(lease.FirstIP(e.own))
		}
	}
	if mtu, _ := e.podMTU(); mtu > 0 {
		t.MTU = mtu
	} else if e.env != nil {
		t.MTU = e.env.MTU
	}
	return t
}

// ---- 7. peers ----

// tunnelName is how a failure names the backend's hop.
func tunnelName(t ProbeTarget) string {
	over := ""
	if t.IPv6 {
		over = " over IPv6"
	}
	switch t.Backend {
	case config.BackendVXLAN:
		return fmt.Sprintf("VXLAN%s (UDP %d)", over, t.Port)
	case config.BackendUDP:
		return fmt.Sprintf("udp (UDP %d)", t.Port)
	case config.BackendWireGuard:
		return fmt.Sprintf("WireGuard%s (UDP %d)", over, t.Port)
	}
	return t.Backend + over
}

// missingFor is what this node lacks of t's lease in t's family: the
// checks note IPv6 items with an "IPv6 " prefix, under the lease's IPv4
// subnet where it has one.
func (e *eval) missingFor(t ProbeTarget) string {
	key := t.Subnet
	for _, l := range e.leases {
		if t.IPv6 && l.IPv6Subnet == t.Subnet && l.Subnet.IsValid() {
			key = l.Subnet
		}
	}
	var out []string
	for _, m := range strings.Split(e.missing[key], ", ") {
		if m != "" && strings.HasPrefix(m, "IPv6 ") == t.IPv6 {
			out = append(out, m)
		}
	}
	return strings.Join(out, ", ")
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d.Microseconds())/1000) }

func (e *eval) peers() {
	pf := e.f.Probe
	if pf == nil {
		return
	}
	if len(pf.Unmatched) > 0 {
		e.add("peers", Warn, "no remote lease matches --peers "+strings.Join(pf.Unmatched, ", "),
			"give public IPs, subnets, lease keys or node names of the leases listed by weft status")
	}
	switch {
	case len(pf.Peers) == 0 && len(pf.Unmatched) == 0:
		e.add("peers", OK, "no remote peers to probe", "")
		return
	case pf.NotProbed > 0:
		e.add("peers", Warn, fmt.Sprintf("probed %d peers, %d more not probed (--max-peers %d)", len(pf.Peers), pf.NotProbed, pf.Options.Max),
			"choose peers with --peers, or raise --max-peers")
	}
	for _, p := range pf.Peers {
		e.peer(p)
	}
}

func (e *eval) peer(p PeerProbe) {
	n := len(e.out)
	e.judgePeer(p)
	if len(e.out) > n {
		rtt := p.Overlay.RTT
		if p.Overlay.Received == 0 {
			rtt = p.Underlay.RTT
		}
		r := e.out[len(e.out)-1]
		e.probed[p.Target.Subnet] = &ProbeView{Status: r.Status, Message: r.Message, RTT: Millis(rtt)}
	}
}

// ProbeView is the verdict of one peer's probe, for weft status.
type ProbeView struct {
	Status  Status `json:"status"`
	Message string `json:"message"`
	RTT     Millis `json:"rttMs,omitempty"` // through the backend, else the underlay; 0 when nothing answered
}

func (e *eval) judgePeer(p PeerProbe) {
	t := p.Target
	who := t.PublicIP.String()
	if t.Node != "" {
		who = t.Node + " " + who
	}
	name := fmt.Sprintf("%s (%s)", who, t.Subnet)
	ul, ov, full := p.Underlay, p.Overlay, p.Full
	switch {
	case p.Err != "":
		e.add("peer", Warn, fmt.Sprintf("%s not probed: %s", name, p.Err), "run doctor as root (raw ICMP), or allow ICMP sockets: sysctl net.ipv4.ping_group_range")
	case ul.lostAll() && (ov.Sent == 0 || ov.lostAll()):
		why := ""
		if ul.Err != "" {
			why = ": " + ul.Err
		}
		e.add("peer", Fail, fmt.Sprintf("underlay to %s unreachable%s (%s lost)", t.PublicIP, why, lossOf(ul)),
			fmt.Sprintf("is the node up? check the underlay between the nodes: ip route get %s, the link, firewalls dropping ICMP", t.PublicIP))
	case ov.lostAll() && ov.Err != "":
		msg := fmt.Sprintf("%s: probe of %s through %s fails on this node: %s", name, ov.Dst, tunnelName(t), ov.Err)
		if m := e.missingFor(t); m != "" {
			msg += ": this node lacks its " + m
		}
		routes := "routes"
		if t.IPv6 {
			routes = "routes-v6"
		}
		e.add("peer", Fail, msg, "this node does not route the peer's subnet into the backend: see "+routes)
	case ov.lostAll() && e.missingFor(t) != "":
		e.add("peer", Fail, fmt.Sprintf("%s: %s through %s lost: this node lacks its %s", name, ov.Dst, tunnelName(t), e.missingFor(t)),
			"see routes / neighbours / fdb above")
	case ov.lostAll() && t.Backend == config.BackendVXLAN:
		e.add("peer", Fail, fmt.Sprintf("%s to %s dropped: the underlay passes ICMP but not the tunnel — check firewalls and security groups", tunnelName(t), t.PublicIP),
			fmt.Sprintf("allow UDP %d between the nodes, both ways (nft list ruleset, iptables -S, the cloud's security groups); a probe of %s through the tunnel got no answer", t.Port, ov.Dst))
	case ov.lostAll() && t.Backend == config.BackendWireGuard:
		e.add("peer", Fail, fmt.Sprintf("%s to %s: no answer through the tunnel while the underlay passes ICMP — a firewall drops it, or the keys do not match", tunnelName(t), t.PublicIP),
			fmt.Sprintf("allow UDP %d between the nodes, both ways; `wg show %s` on both nodes: a peer with no recent handshake has the other's old key (its lease's PublicKey) or is blocked", t.Port, wgDevice(e, t)))
	case ov.lostAll() && t.Backend == config.BackendUDP:
		e.add("peer", Fail, fmt.Sprintf("peer's agent not answering on its subnet: %s via %s to %s, none answered", ov.Dst, tunnelName(t), t.PublicIP),
			fmt.Sprintf("is weftd running on %s? allow UDP %d between the nodes (firewalls, security groups)", who, t.Port))
	case ov.lostAll():
		e.add("peer", Fail, fmt.Sprintf("peer's agent not answering on its subnet: gateway %s via %s (%s) did not answer", ov.Dst, t.PublicIP, t.Backend),
			fmt.Sprintf("on %s: is weftd running, cni0 up with %s (a pod started there), ip_forward on? host-gw needs the nodes on one L2 segment", who, ov.Dst))
	case full.lostAll():
		crossed := "smaller ones were not tried"
		if p.Largest > 0 {
			crossed = fmt.Sprintf("%d do", p.Largest)
		}
		if full.Err != "" {
			crossed += " (" + full.Err + ")"
		}
		e.add("peer", Fail, fmt.Sprintf("MTU black hole to %s: %d-byte packets do not cross, %s", t.PublicIP, full.Size, crossed),
			fmt.Sprintf("a link between the nodes has a smaller MTU than the overlay expects: give every node's underlay the same MTU (ip link show), or set Backend.MTU%s", lowerTo(p.Largest)))
	default:
		var hops []string
		hops = append(hops, "underlay "+pingText(ul))
		if ov.Sent > 0 {
			hops = append(hops, fmt.Sprintf("%s %s", t.Backend, pingText(ov)))
		}
		if full.Sent > 0 {
			hops = append(hops, fmt.Sprintf("%d-byte DF %s", full.Size, pingText(full)))
		}
		msg := name + ": " + strings.Join(hops, ", ")
		if ul.Received < ul.Sent || ov.Received < ov.Sent || full.Received < full.Sent {
			hint := "packet loss between the nodes: check the underlay (ip -s link, the switch), or the peer's load"
			if ul.lostAll() {
				hint = "the overlay works but the underlay drops ICMP: a firewall filtering ICMP between the nodes breaks path MTU discovery"
			}
			e.add("peer", Warn, msg, hint)
			return
		}
		e.add("peer", OK, msg, "")
	}
}

// largestCrossing finds the largest packet size that crosses, given that
// small does and mtu does not: first whether floor (the least MTU a path
// must carry) crosses, then a binary search in what is left. crosses
// sends one echo of size with sequence number seq (3, 4, ...: 0 to 2 are
// the hops') and says whether it came back; a search whose echoes stop
// coming back (ctx done) ends at the largest size seen to cross.
func largestCrossing(small, floor, mtu int, crosses func(size int, seq uint16) bool) int {
	lo, hi := small, mtu // lo crosses, hi does not
	switch {
	case floor >= hi:
		// IPv6's floor (1280) is not below the device's MTU: search under it.
	case crosses(floor, 3):
		lo = floor
	default:
		hi = floor
	}
	for seq := uint16(4); hi-lo > 1; seq++ {
		mid := (lo + hi) / 2
		if crosses(mid, seq) {
			lo = mid
		} else {
			hi = mid
		}
	}
	return lo
}

func lowerTo(largest int) string {
	if largest <= 0 {
		return ""
	}
	return fmt.Sprintf(" to %d or less", largest)
}

func lossOf(p Ping) string { return fmt.Sprintf("%d of %d", p.Sent-p.Received, p.Sent) }

func pingText(p Ping) string {
	if p.Received == 0 {
		return lossOf(p) + " lost"
	}
	s := ms(p.RTT)
	if p.Received < p.Sent {
		s += fmt.Sprintf(", %.0f%% loss", 100*p.Loss())
	}
	return s
}

// wgDevice is the WireGuard device that carries t's family.
func wgDevice(e *eval, t ProbeTarget) string {
	if e.net != nil {
		if d := wireguard.DeviceFor(e.net, t.IPv6); d != "" {
			return d
		}
	}
	return wireguard.DeviceName
}
