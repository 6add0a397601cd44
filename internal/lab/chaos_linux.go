package lab

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net/netip"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/netlinkx"
)

// ChaosOptions tune Chaos.
type ChaosOptions struct {
	// Duration is how long to keep making faults; 0 with Rounds: no
	// bound but the rounds.
	Duration time.Duration
	// Rounds, when positive, ends the run after that many rounds (every
	// kind of fault once per round), or at Duration if that comes first.
	Rounds int
	// Faults, when given, are the only kinds made, by the names the
	// report gives them; default every kind the lab has.
	Faults []string
	Seed   uint64 // 0: random
	// HealWithin is how long a fault may take to heal before it counts as
	// unhealed; default 15 s.
	HealWithin time.Duration
	Progress   io.Writer // one line per fault; nil for none
}

// ChaosClass is what Chaos measured of one kind of fault.
type ChaosClass struct {
	Name string
	// CutsPath says the fault itself takes a path away (a deleted route
	// loses packets until it is back); for the others, any loss is a
	// defect.
	CutsPath bool
	Faults   int
	Unhealed int
	Lost     int // echoes that got no answer during the faults' windows, every family
	Sent     int
	// Families are Lost and Sent per IP family of the lab, IPv4 first.
	Families []FamilyEchoes
	// Collateral counts the echoes lost on a family whose path the fault
	// left alone (a deleted IPv6 route must cost IPv4 nothing; a fault
	// that cuts no path, every lost echo): each is a defect.
	Collateral int
	Heal       []time.Duration
}

// FamilyEchoes are one IP family's echoes in a kind's windows.
type FamilyEchoes struct {
	IPv6       bool
	Lost, Sent int
	Collateral int // lost while the fault in that window did not cut this family
}

// ChaosReport is the outcome of a Chaos run.
type ChaosReport struct {
	Seed    uint64
	Classes []ChaosClass
}

// Unhealed counts faults that did not heal in time, and kinds of fault
// that lost packets on a family they did not cut.
func (r ChaosReport) Unhealed() int {
	n := 0
	for _, c := range r.Classes {
		n += c.Unhealed
		if c.Collateral > 0 {
			n++
		}
	}
	return n
}

func familyName(v6 bool) string {
	if v6 {
		return "IPv6"
	}
	return "IPv4"
}

// lostSent is a kind's LOST/SENT cell: "3/120", or per family in a
// dual-stack lab, "v4 0/120 v6 3/118".
func (c ChaosClass) lostSent() string {
	if len(c.Families) < 2 {
		return fmt.Sprintf("%d/%d", c.Lost, c.Sent)
	}
	var parts []string
	for _, f := range c.Families {
		v := "v4"
		if f.IPv6 {
			v = "v6"
		}
		parts = append(parts, fmt.Sprintf("%s %d/%d", v, f.Lost, f.Sent))
	}
	return strings.Join(parts, " ")
}

func (c ChaosClass) note() string {
	if !c.CutsPath {
		if c.Lost > 0 {
			return "LOST PACKETS: a defect"
		}
		return "must lose none"
	}
	if c.Collateral > 0 {
		var on []string
		for _, f := range c.Families {
			if f.Collateral > 0 {
				on = append(on, fmt.Sprintf("%d on %s", f.Collateral, familyName(f.IPv6)))
			}
		}
		return "LOST " + strings.Join(on, ", ") + ", which it did not cut: a defect"
	}
	if len(c.Families) > 1 {
		return "may lose packets on the family it cuts, while it is cut"
	}
	return "may lose packets while the path is cut"
}

// Render prints the report as a table.
func (r ChaosReport) Render(w io.Writer) {
	// Heal times run from the fault to the end of the first check that
	// finds the lab whole (every agent ready, every pod pair answering
	// over every family), so they include the check itself (about a
	// second here).
	width := len("LOST/SENT")
	for _, c := range r.Classes {
		width = max(width, len(c.lostSent()))
	}
	fmt.Fprintf(w, "%-16s %6s %9s %*s %10s %10s %s\n", "FAULT", "COUNT", "UNHEALED", width, "LOST/SENT", "HEAL P50", "HEAL MAX", "NOTE")
	for _, c := range r.Classes {
		if c.Faults == 0 {
			continue
		}
		fmt.Fprintf(w, "%-16s %6d %9d %*s %10s %10s %s\n", c.Name, c.Faults, c.Unhealed, width, c.lostSent(),
			quantile(c.Heal, 0.5).Round(time.Millisecond), quantile(c.Heal, 1).Round(time.Millisecond), c.note())
	}
}

// fault is one kind of fault: inject breaks something and says what.
type fault struct {
	name     string
	cutsPath bool
	inject   func(ctx context.Context, c *chaos) (made, error)
}

// made is one fault as injected.
type made struct {
	what string
	// cuts are the IP families (false IPv4, true IPv6) whose path the
	// fault takes away; echoes of the others must all be answered.
	cuts []bool
	// undo, if set, undoes the fault at the end of its window; nil when
	// the agents are to repair it themselves.
	undo func(context.Context) error
}

// window is the time a fault was counted over: from its injection to
// shortly after it healed.
type window struct {
	class    int
	from, to time.Time
	cuts     []bool
}

type chaos struct {
	l   *Lab
	rnd *rand.Rand
	// turn is, per kind of fault, the count of its faults so far plus a
	// random start: its next fault's IP family (see family).
	turn map[string]int
}

// Chaos makes random faults in the lab, one at a time, while every pod
// pings every other over every IP family the lab has: agent SIGKILL, the
// store stopped and restarted, routes, neighbours, FDB entries and the
// backend's devices deleted (of either family, in turn), the underlay
// link flapped, hostile leases written. After each it waits for the lab
// to heal (every agent ready, every pod reaching every other over every
// family) and records how long that took; at the end it counts, per kind
// of fault and family, the echoes lost in its windows.
func (l *Lab) Chaos(ctx context.Context, o ChaosOptions) (ChaosReport, error) {
	if o.Seed == 0 {
		o.Seed = rand.Uint64()
	}
	if o.HealWithin == 0 {
		o.HealWithin = 15 * time.Second
	}
	progress := func(format string, args ...any) {
		if o.Progress != nil {
			fmt.Fprintf(o.Progress, format+"\n", args...)
		}
	}
	c := &chaos{l: l, rnd: rand.New(rand.NewPCG(o.Seed, o.Seed^0x9e3779b97f4a7c15)), turn: map[string]int{}}
	faults, err := selectFaults(c.faults(), o.Faults)
	report := ChaosReport{Seed: o.Seed}
	if err != nil {
		return report, err
	}
	for _, f := range faults {
		cl := ChaosClass{Name: f.name, CutsPath: f.cutsPath}
		for _, v6 := range l.Families() {
			cl.Families = append(cl.Families, FamilyEchoes{IPv6: v6})
		}
		report.Classes = append(report.Classes, cl)
	}
	if err := c.healed(ctx, o.HealWithin); err != nil {
		return report, fmt.Errorf("the lab is not whole before the first fault: %w", err)
	}
	pingers, err := c.startPingers()
	defer func() {
		for _, p := range pingers {
			p.stop()
		}
	}()
	if err != nil {
		return report, err
	}
	time.Sleep(time.Second) // the pingers' first echoes

	var windows []window
	var deadline time.Time
	if o.Duration > 0 || o.Rounds <= 0 {
		deadline = time.Now().Add(o.Duration)
	}
	var order []int // every kind once per round, in random order
	rounds := 0
	for n := 1; (deadline.IsZero() || time.Now().Before(deadline)) && ctx.Err() == nil; n++ {
		if len(order) == 0 {
			if o.Rounds > 0 && rounds == o.Rounds {
				break
			}
			rounds++
			order = c.rnd.Perm(len(faults))
		}
		i := order[0]
		order = order[1:]
		f := faults[i]
		from := time.Now()
		m, err := f.inject(ctx, c)
		if err != nil {
			return report, fmt.Errorf("fault %d (%s): %w", n, f.name, err)
		}
		if m.undo != nil {
			// The fault lasts a moment before it is undone (the agent
			// restarted, the store back, the link up).
			time.Sleep(time.Second)
			if err := m.undo(ctx); err != nil {
				return report, fmt.Errorf("fault %d (%s): undo: %w", n, f.name, err)
			}
		}
		herr := c.healed(ctx, o.HealWithin)
		took := time.Since(from)
		cl := &report.Classes[i]
		cl.Faults++
		if herr != nil {
			cl.Unhealed++
			progress("fault %d %s (%s): NOT HEALED within %s: %v", n, f.name, m.what, o.HealWithin, herr)
		} else {
			cl.Heal = append(cl.Heal, took)
			progress("fault %d %s (%s): healed in %s", n, f.name, m.what, took.Round(time.Millisecond))
		}
		// Echoes in flight when it healed belong to the fault.
		time.Sleep(500 * time.Millisecond)
		windows = append(windows, window{class: i, from: from, to: time.Now(), cuts: m.cuts})
	}
	var echoes []echo
	for _, p := range pingers {
		p.stop()
		echoes = append(echoes, p.echoes()...)
	}
	report.count(echoes, windows)
	return report, ctx.Err()
}

// selectFaults keeps the kinds named (all when none is), in their order.
func selectFaults(all []fault, names []string) ([]fault, error) {
	if len(names) == 0 {
		return all, nil
	}
	var out []fault
	for _, name := range names {
		i := slices.IndexFunc(all, func(f fault) bool { return f.name == name })
		if i < 0 {
			var have []string
			for _, f := range all {
				have = append(have, f.name)
			}
			return nil, fmt.Errorf("fault %q: this lab's kinds are %s", name, strings.Join(have, ", "))
		}
		out = append(out, all[i])
	}
	return out, nil
}

// count adds each echo to the kind of fault whose window it falls in: to
// its family's Lost and Sent and, when lost on a family the fault did not
// cut, to Collateral.
func (r *ChaosReport) count(echoes []echo, windows []window) {
	for _, e := range echoes {
		for _, w := range windows {
			if e.at.Before(w.from) || !e.at.Before(w.to) {
				continue
			}
			cl := &r.Classes[w.class]
			fi := slices.IndexFunc(cl.Families, func(f FamilyEchoes) bool { return f.IPv6 == e.v6 })
			if fi < 0 {
				// Not a family of the lab: a report built by hand.
				cl.Families = append(cl.Families, FamilyEchoes{IPv6: e.v6})
				fi = len(cl.Families) - 1
			}
			fe := &cl.Families[fi]
			cl.Sent++
			fe.Sent++
			if !e.lost {
				continue
			}
			cl.Lost++
			fe.Lost++
			if !slices.Contains(w.cuts, e.v6) {
				cl.Collateral++
				fe.Collateral++
			}
		}
	}
}

// healed waits until every agent is ready and every pod reaches every
// other over every family.
func (c *chaos) healed(ctx context.Context, within time.Duration) error {
	wctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	var last error
	for {
		err := c.whole(wctx)
		switch {
		case err == nil:
			return nil
		case wctx.Err() == nil || last == nil:
			last = err // not the deadline cutting the check short
		}
		select {
		case <-wctx.Done():
			return last
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (c *chaos) whole(ctx context.Context) error {
	for _, n := range c.l.Nodes {
		if n.Unregistered {
			continue
		}
		code, body, err := c.l.Readyz(ctx, n.Index)
		if err != nil || code != 200 {
			return fmt.Errorf("node %d not ready: %d %s %v", n.Index, code, strings.TrimSpace(body), err)
		}
	}
	for _, v6 := range c.l.Families() {
		m, err := c.l.Check(ctx, CheckOptions{IPv6: v6})
		if err != nil {
			return err
		}
		if f := m.Failures(); f > 0 {
			return fmt.Errorf("%d of %d pod pairs cannot reach each other over %s", f, m.Tested(), familyName(v6))
		}
	}
	return nil
}

// node picks a node at random; peer another one.
func (c *chaos) node() *Node { return &c.l.Nodes[c.rnd.IntN(len(c.l.Nodes))] }

func (c *chaos) peer(n *Node) *Node {
	for {
		p := c.node()
		if p.Index != n.Index {
			return p
		}
	}
}

// family is the IP family (false IPv4, true IPv6) of the next fault of
// kind: the lab's families in turn, from a random first, so that a kind
// made twice in a dual-stack lab has cut each.
func (c *chaos) family(kind string) bool {
	fams := c.l.Families()
	t, ok := c.turn[kind]
	if !ok {
		t = c.rnd.IntN(len(fams))
	}
	c.turn[kind] = t + 1
	return fams[t%len(fams)]
}

// handle opens netlink on node n's namespace.
func handle(n *Node) (*netlinkx.Handle, error) { return netlinkx.NewAt(nsPath(n.NS)) }

// device is the backend's device that carries family v6's pod traffic on
// the node h is on, and the families deleting it cuts; "" when the
// backend has none (host-gw).
func (c *chaos) device(h *netlinkx.Handle, v6 bool) (string, []bool) {
	switch c.l.Backend {
	case "vxlan":
		if v6 {
			return "flannel-v6.1", []bool{true}
		}
		return "flannel.1", []bool{false}
	case "udp":
		return "flannel0", []bool{false}
	case "wireguard":
		// Mode separate runs flannel-wg-v6 beside flannel-wg; the other
		// modes carry both families in flannel-wg.
		if c.l.HasIPv6() {
			if _, err := h.LinkByName("flannel-wg-v6"); err != nil {
				return "flannel-wg", c.l.Families()
			}
		}
		if v6 {
			return "flannel-wg-v6", []bool{true}
		}
		return "flannel-wg", []bool{false}
	}
	return "", nil
}

// agentCarries says the datapath runs inside weftd (udp's TUN forwarder,
// a userspace WireGuard device), so that killing the agent cuts every
// path until it is back.
func (c *chaos) agentCarries() bool {
	switch c.l.Backend {
	case "udp":
		return true
	case "wireguard":
		h, err := handle(&c.l.Nodes[0])
		if err != nil {
			return false
		}
		defer h.Close()
		for _, name := range []string{"flannel-wg", "flannel-wg-v6"} {
			if l, err := h.LinkByName(name); err == nil {
				return l.Type() == "tuntap"
			}
		}
	}
	return false
}

func (c *chaos) faults() []fault {
	agentCuts := c.agentCarries()
	fs := []fault{
		{name: "agent-kill", cutsPath: agentCuts, inject: func(ctx context.Context, c *chaos) (made, error) {
			n := c.node()
			if err := c.l.KillAgent(ctx, n.Index); err != nil {
				return made{}, err
			}
			m := made{
				what: fmt.Sprintf("weftd on node %d, SIGKILL, started again 1 s later", n.Index),
				undo: func(ctx context.Context) error { return c.l.StartAgent(ctx, n.Index) },
			}
			if agentCuts {
				m.cuts = c.l.Families()
			}
			return m, nil
		}},
		{name: "route-del", cutsPath: true, inject: func(ctx context.Context, c *chaos) (made, error) {
			n := c.node()
			p := c.peer(n)
			v6 := c.family("route-del")
			h, err := handle(n)
			if err != nil {
				return made{}, err
			}
			defer h.Close()
			dst, network := p.Subnet.Masked(), c.l.Network
			fam := netlinkx.FamilyV4
			if v6 {
				dst, network, fam = p.Subnet6.Masked(), c.l.IPv6Network, netlinkx.FamilyV6
			}
			routes, err := h.RouteList(netlinkx.RouteFilter{Family: fam})
			if err != nil {
				return made{}, err
			}
			r, ok := routeTo(routes, dst, netip.MustParsePrefix(network))
			if !ok {
				return made{}, fmt.Errorf("node %d has no route to %s", n.Index, dst)
			}
			return made{what: fmt.Sprintf("node %d: route %s (to node %d's %s)", n.Index, r.Dst, p.Index, dst), cuts: []bool{v6}}, h.RouteDel(r)
		}},
		{name: "hostile-lease", inject: func(ctx context.Context, c *chaos) (made, error) {
			if c.l.Store == StoreKube {
				return made{what: "skipped (kube store: leases are Node objects)"}, nil
			}
			n := c.node()
			k := c.hostileLease(n)
			cli, err := c.l.StoreClient(ctx)
			if err != nil {
				return made{}, err
			}
			defer cli.Close()
			key := "/coreos.com/network/subnets/" + k.key
			if _, err := cli.Put(ctx, key, k.value); err != nil {
				return made{}, err
			}
			// Left for the agents to refuse while the lab heals, then removed.
			return made{
				what: fmt.Sprintf("%s (%s), for node %d", key, k.what, n.Index),
				undo: func(ctx context.Context) error {
					cli, err := c.l.StoreClient(ctx)
					if err != nil {
						return err
					}
					defer cli.Close()
					_, err = cli.Delete(ctx, key)
					return err
				},
			}, nil
		}},
		{name: "underlay-flap", cutsPath: true, inject: func(ctx context.Context, c *chaos) (made, error) {
			n := c.node()
			if _, err := c.l.Exec(ctx, n.NS, "ip", "link", "set", "eth0", "down"); err != nil {
				return made{}, err
			}
			return made{
				what: fmt.Sprintf("node %d: eth0 down for 1 s", n.Index),
				cuts: c.l.Families(),
				undo: func(ctx context.Context) error {
					if _, err := c.l.Exec(ctx, n.NS, "ip", "link", "set", "eth0", "up"); err != nil {
						return err
					}
					if !n.PublicIPv6.IsValid() {
						return nil
					}
					// The kernel drops a link's IPv6 addresses when it goes
					// down (keep_addr_on_down 0); the host's network
					// configuration puts its address back, as here.
					a := netip.PrefixFrom(n.PublicIPv6, netip.MustParsePrefix(underlayPrefix6).Bits())
					_, err := c.l.Exec(ctx, n.NS, "ip", "-6", "addr", "replace", a.String(), "dev", "eth0")
					return err
				},
			}, nil
		}},
	}
	if c.l.Store != StoreKube {
		fs = append(fs, fault{name: "store-restart", inject: func(ctx context.Context, c *chaos) (made, error) {
			// One member of several (the others keep a quorum), or the
			// only one.
			m := 1 + c.rnd.IntN(len(c.l.EtcdMembers))
			if err := c.l.KillEtcdMember(ctx, m); err != nil {
				return made{}, err
			}
			return made{
				what: fmt.Sprintf("etcd member %d of %d stopped (SIGKILL), started again 1 s later", m, len(c.l.EtcdMembers)),
				undo: func(ctx context.Context) error { return c.l.StartEtcdMembers(ctx, m) },
			}, nil
		}})
	}
	if c.l.Backend != "host-gw" {
		fs = append(fs, fault{name: "device-del", cutsPath: true, inject: func(ctx context.Context, c *chaos) (made, error) {
			n := c.node()
			h, err := handle(n)
			if err != nil {
				return made{}, err
			}
			defer h.Close()
			dev, cuts := c.device(h, c.family("device-del"))
			_, err = c.l.Exec(ctx, n.NS, "ip", "link", "del", dev)
			return made{what: fmt.Sprintf("node %d: %s", n.Index, dev), cuts: cuts}, err
		}})
	}
	if c.l.Backend == "vxlan" {
		fs = append(fs,
			fault{name: "neigh-del", cutsPath: true, inject: func(ctx context.Context, c *chaos) (made, error) {
				v6 := c.family("neigh-del")
				return c.delOnDevice(ctx, v6, "neighbour", func(h *netlinkx.Handle, idx int) (string, error) {
					fam := netlinkx.FamilyV4
					if v6 {
						fam = netlinkx.FamilyV6
					}
					all, err := h.NeighList(idx, fam)
					if err != nil {
						return "", err
					}
					// weftd's entries, not the kernel's own (IPv6 link-local ones).
					ns := slices.DeleteFunc(all, func(x netlinkx.Neigh) bool { return x.State&netlinkx.NUDPermanent == 0 })
					if len(ns) == 0 {
						return "", fmt.Errorf("no permanent %s neighbours", familyName(v6))
					}
					x := ns[c.rnd.IntN(len(ns))]
					return x.IP.String(), h.NeighDel(x)
				})
			}},
			fault{name: "fdb-del", cutsPath: true, inject: func(ctx context.Context, c *chaos) (made, error) {
				return c.delOnDevice(ctx, c.family("fdb-del"), "FDB entry", func(h *netlinkx.Handle, idx int) (string, error) {
					fs, err := h.FDBList(idx)
					if err != nil || len(fs) == 0 {
						return "", fmt.Errorf("no FDB entries: %v", err)
					}
					x := fs[c.rnd.IntN(len(fs))]
					return x.MAC.String() + " dst " + x.Dst.String(), h.FDBDel(x)
				})
			}},
		)
	}
	return fs
}

// routeTo is the route that carries dst (a peer's subnet): the route to
// it, else one to a larger part of the cluster network holding it (udp
// and wireguard route the whole network into their device).
func routeTo(routes []netlinkx.Route, dst, network netip.Prefix) (netlinkx.Route, bool) {
	if i := slices.IndexFunc(routes, func(r netlinkx.Route) bool { return r.Dst == dst }); i >= 0 {
		return routes[i], true
	}
	i := slices.IndexFunc(routes, func(r netlinkx.Route) bool {
		return r.Dst.Bits() < dst.Bits() && r.Dst.Contains(dst.Addr()) && r.Dst.Bits() >= network.Bits() && network.Contains(r.Dst.Addr())
	})
	if i < 0 {
		return netlinkx.Route{}, false
	}
	return routes[i], true
}

// hostile is a lease no agent may program.
type hostile struct{ key, value, what string }

// hostileLease picks a lease that would take traffic from node n's pods,
// or from the cluster, if an agent programmed it; in a dual-stack lab
// also one whose IPv6 half does.
func (c *chaos) hostileLease(n *Node) hostile {
	own := n.Subnet.Masked()
	value := func(v6 bool) string {
		v := `{"PublicIP":"192.0.2.66","PublicIPv6":null,"BackendType":"` + c.l.Backend + `","BackendData":{"VNI":1,"VtepMAC":"02:66:00:00:00:01"}`
		if v6 {
			v = `{"PublicIP":"192.0.2.66","PublicIPv6":"2001:db8::66","BackendType":"` + c.l.Backend + `","BackendData":{"VNI":1,"VtepMAC":"02:66:00:00:00:01"},"BackendV6Data":{"VNI":1,"VtepMAC":"02:66:00:00:00:02"}`
		}
		return v + "}"
	}
	kinds := []hostile{
		{lease.Key(netip.PrefixFrom(plusLast(own.Addr(), 2), 32), netip.Prefix{}), value(false), "a /32 inside node's subnet"},
		{lease.Key(netip.PrefixFrom(plusLast(own.Addr(), 128), own.Bits()+1), netip.Prefix{}), value(false), "half of node's subnet"},
		{"10.244.0.0-17", value(false), "a catch-all /17"},
		{"192.0.2.0-24", value(false), "the underlay, outside Network"},
	}
	if c.l.HasIPv4() && c.l.HasIPv6() {
		// The IPv4 half is a subnet no node holds: only the IPv6 half is hostile.
		free := c.freeSubnet()
		own6 := n.Subnet6.Masked()
		kinds = append(kinds,
			hostile{lease.Key(free, own6), value(true), "node's IPv6 subnet, beside a free IPv4 one"},
			hostile{lease.Key(free, netip.PrefixFrom(own6.Addr(), own6.Bits()-4).Masked()), value(true), "an IPv6 /" + strconv.Itoa(own6.Bits()-4) + " holding node's, beside a free IPv4 subnet"},
		)
	}
	return kinds[c.rnd.IntN(len(kinds))]
}

// freeSubnet is a /24 of the lab's network that no node holds.
func (c *chaos) freeSubnet() netip.Prefix {
	network := netip.MustParsePrefix(c.l.Network)
	b := network.Addr().As4()
	for i := 255; i > 0; i-- {
		b[2] = byte(i)
		p := netip.PrefixFrom(netip.AddrFrom4(b), 24)
		if !slices.ContainsFunc(c.l.Nodes, func(n Node) bool { return n.Subnet.Overlaps(p) }) && network.Contains(p.Addr()) {
			return p
		}
	}
	return netip.MustParsePrefix("10.244.255.0/24")
}

// plusLast is a with n added to its last byte.
func plusLast(a netip.Addr, n byte) netip.Addr {
	b := a.As4()
	b[3] += n
	return netip.AddrFrom4(b)
}

// delOnDevice deletes one entry on a random node's backend device of
// family v6.
func (c *chaos) delOnDevice(ctx context.Context, v6 bool, what string, del func(h *netlinkx.Handle, idx int) (string, error)) (made, error) {
	n := c.node()
	h, err := handle(n)
	if err != nil {
		return made{}, err
	}
	defer h.Close()
	dev, cuts := c.device(h, v6)
	l, err := h.LinkByName(dev)
	if err != nil {
		return made{}, err
	}
	which, err := del(h, l.Attrs().Index)
	if err != nil {
		err = fmt.Errorf("node %d %s: %w", n.Index, dev, err)
	}
	return made{what: fmt.Sprintf("node %d: %s %s on %s", n.Index, what, which, dev), cuts: cuts}, err
}

// pinger is one `ping -D -O` from a pod to another over one family, kept
// running.
type pinger struct {
	v6   bool
	cmd  *exec.Cmd
	mu   sync.Mutex
	out  strings.Builder
	done chan struct{}
	once sync.Once
}

type echo struct {
	at   time.Time
	v6   bool
	lost bool
}

// startPingers starts a pinger from every pod to every other over every
// family of the lab; on an error, those started are returned too, for the
// caller to stop.
func (c *chaos) startPingers() ([]*pinger, error) {
	var ps []*pinger
	pods := c.l.Pods()
	for _, v6 := range c.l.Families() {
		for _, a := range pods {
			for _, b := range pods {
				if a.NS == b.NS {
					continue
				}
				p := &pinger{v6: v6, done: make(chan struct{})}
				p.cmd = exec.Command("ip", "netns", "exec", a.NS, "ping", "-n", "-D", "-O", "-i", "0.1", b.Addr(v6).String())
				out, err := p.cmd.StdoutPipe()
				if err != nil {
					return ps, err
				}
				if err := p.cmd.Start(); err != nil {
					return ps, fmt.Errorf("ping from %s: %w", a.NS, err)
				}
				go func() {
					s := bufio.NewScanner(out)
					for s.Scan() {
						p.mu.Lock()
						p.out.WriteString(s.Text() + "\n")
						p.mu.Unlock()
					}
					_ = p.cmd.Wait()
					close(p.done)
				}()
				ps = append(ps, p)
			}
		}
	}
	return ps, nil
}

func (p *pinger) stop() {
	p.once.Do(func() {
		_ = p.cmd.Process.Signal(os.Interrupt)
		select {
		case <-p.done:
		case <-time.After(3 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
	})
}

// ping -D prefixes each line with [unix time]; -O reports an echo not
// answered by the time the next is sent, which may still be answered
// later; "From" lines are ICMP errors in reply (unreachable).
var echoLine = regexp.MustCompile(`^\[(\d+)\.(\d+)\] (?:\d+ bytes from .*icmp_seq=(\d+)|no answer yet for icmp_seq=(\d+)|From \S+ icmp_seq=(\d+))`)

func (p *pinger) echoes() []echo {
	p.mu.Lock()
	defer p.mu.Unlock()
	return parseEchoes(p.out.String(), p.v6)
}

// parseEchoes reads the echoes of `ping -D -O` output, in time order. An
// echo is lost when it was reported unanswered (or answered with an ICMP
// error) and no reply came later: a reply that only comes late (a path
// that stalls, a handshake) is slow, not lost. Each is timed by its first
// line.
func parseEchoes(out string, v6 bool) []echo {
	var es []echo
	pending := map[string]int{} // seq of an echo reported unanswered -> its index
	for _, line := range strings.Split(out, "\n") {
		m := echoLine.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		sec, _ := strconv.ParseInt(m[1], 10, 64)
		frac := m[2]
		for len(frac) < 9 {
			frac += "0"
		}
		ns, _ := strconv.ParseInt(frac[:9], 10, 64)
		at := time.Unix(sec, ns)
		switch reply, unanswered, failed := m[3], m[4], m[5]; {
		case reply != "":
			if i, ok := pending[reply]; ok {
				es[i].lost = false // late, not lost
				delete(pending, reply)
				continue
			}
			es = append(es, echo{at: at, v6: v6})
		case unanswered != "":
			pending[unanswered] = len(es)
			es = append(es, echo{at: at, v6: v6, lost: true})
		case failed != "":
			if _, ok := pending[failed]; ok {
				continue // counted when it went unanswered
			}
			es = append(es, echo{at: at, v6: v6, lost: true})
		}
	}
	slices.SortFunc(es, func(a, b echo) int { return a.at.Compare(b.at) })
	return es
}
