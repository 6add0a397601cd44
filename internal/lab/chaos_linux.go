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
	Duration time.Duration // how long to keep making faults
	Seed     uint64        // 0: random
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
	Lost     int // echoes that got no answer during the faults' windows
	Sent     int
	Heal     []time.Duration
}

// ChaosReport is the outcome of a Chaos run.
type ChaosReport struct {
	Seed    uint64
	Classes []ChaosClass
}

// Unhealed counts faults that did not heal in time, and faults that should
// lose nothing but did.
func (r ChaosReport) Unhealed() int {
	n := 0
	for _, c := range r.Classes {
		n += c.Unhealed
		if !c.CutsPath && c.Lost > 0 {
			n++
		}
	}
	return n
}

// Render prints the report as a table.
func (r ChaosReport) Render(w io.Writer) {
	// Heal times run from the fault to the end of the first check that
	// finds the lab whole (every agent ready, every pod pair answering),
	// so they include the check itself (about a second here).
	fmt.Fprintf(w, "%-16s %6s %9s %12s %10s %10s %s\n", "FAULT", "COUNT", "UNHEALED", "LOST/SENT", "HEAL P50", "HEAL MAX", "NOTE")
	for _, c := range r.Classes {
		if c.Faults == 0 {
			continue
		}
		note := "may lose packets while the path is cut"
		if !c.CutsPath {
			note = "must lose none"
			if c.Lost > 0 {
				note = "LOST PACKETS: a defect"
			}
		}
		fmt.Fprintf(w, "%-16s %6d %9d %12s %10s %10s %s\n", c.Name, c.Faults, c.Unhealed,
			fmt.Sprintf("%d/%d", c.Lost, c.Sent), quantile(c.Heal, 0.5).Round(time.Millisecond),
			quantile(c.Heal, 1).Round(time.Millisecond), note)
	}
}

// fault is one kind of fault: inject breaks something and returns what
// undoes it at the end of the fault's window, if anything must (nil when
// the agents are to repair it themselves).
type fault struct {
	name     string
	cutsPath bool
	inject   func(ctx context.Context, c *chaos) (undo func(context.Context) error, what string, err error)
}

type chaos struct {
	l   *Lab
	rnd *rand.Rand
}

// Chaos makes random faults in the lab, one at a time, while every pod
// pings every other: agent SIGKILL, the store stopped and restarted,
// routes, neighbours, FDB entries and the backend's device deleted, the
// underlay link flapped, hostile leases written. After each it waits for
// the lab to heal (every agent ready, every pod reaching every other) and
// records how long that took; at the end it counts, per kind of fault,
// the echoes lost in its windows.
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
	c := &chaos{l: l, rnd: rand.New(rand.NewPCG(o.Seed, o.Seed^0x9e3779b97f4a7c15))}
	faults := c.faults()
	report := ChaosReport{Seed: o.Seed}
	for _, f := range faults {
		report.Classes = append(report.Classes, ChaosClass{Name: f.name, CutsPath: f.cutsPath})
	}
	if err := c.healed(ctx, o.HealWithin); err != nil {
		return report, fmt.Errorf("the lab is not whole before the first fault: %w", err)
	}
	pingers, err := c.startPingers(ctx)
	if err != nil {
		return report, err
	}
	defer func() {
		for _, p := range pingers {
			p.stop()
		}
	}()
	time.Sleep(time.Second) // the pingers' first echoes

	type window struct {
		class    int
		from, to time.Time
	}
	var windows []window
	deadline := time.Now().Add(o.Duration)
	var order []int // every kind once per round, in random order
	for n := 1; time.Now().Before(deadline) && ctx.Err() == nil; n++ {
		if len(order) == 0 {
			order = c.rnd.Perm(len(faults))
		}
		i := order[0]
		order = order[1:]
		f := faults[i]
		from := time.Now()
		undo, what, err := f.inject(ctx, c)
		if err != nil {
			return report, fmt.Errorf("fault %d (%s): %w", n, f.name, err)
		}
		if undo != nil {
			// The fault lasts a moment before it is undone (the agent
			// restarted, the store back, the link up).
			time.Sleep(time.Second)
			if err := undo(ctx); err != nil {
				return report, fmt.Errorf("fault %d (%s): undo: %w", n, f.name, err)
			}
		}
		herr := c.healed(ctx, o.HealWithin)
		took := time.Since(from)
		cl := &report.Classes[i]
		cl.Faults++
		if herr != nil {
			cl.Unhealed++
			progress("fault %d %s (%s): NOT HEALED within %s: %v", n, f.name, what, o.HealWithin, herr)
		} else {
			cl.Heal = append(cl.Heal, took)
			progress("fault %d %s (%s): healed in %s", n, f.name, what, took.Round(time.Millisecond))
		}
		// Echoes in flight when it healed belong to the fault.
		time.Sleep(500 * time.Millisecond)
		windows = append(windows, window{class: i, from: from, to: time.Now()})
	}
	for _, p := range pingers {
		p.stop()
	}
	for _, p := range pingers {
		for _, e := range p.echoes() {
			for _, w := range windows {
				if !e.at.Before(w.from) && e.at.Before(w.to) {
					report.Classes[w.class].Sent++
					if e.lost {
						report.Classes[w.class].Lost++
					}
				}
			}
		}
	}
	return report, ctx.Err()
}

// healed waits until every agent is ready and every pod reaches every
// other.
func (c *chaos) healed(ctx context.Context, within time.Duration) error {
	wctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	var last error
	for {
		last = c.whole(wctx)
		if last == nil {
			return nil
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
	m, err := c.l.Check(ctx, CheckOptions{})
	if err != nil {
		return err
	}
	if f := m.Failures(); f > 0 {
		return fmt.Errorf("%d of %d pod pairs cannot reach each other", f, m.Tested())
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

// handle opens netlink on node n's namespace.
func handle(n *Node) (*netlinkx.Handle, error) { return netlinkx.NewAt(nsPath(n.NS)) }

// device is the backend's device on a node, or "" (host-gw has none).
func (c *chaos) device() string {
	switch c.l.Backend {
	case "vxlan":
		return "flannel.1"
	case "udp":
		return "flannel0"
	case "wireguard":
		return "flannel-wg"
	}
	return ""
}

func (c *chaos) faults() []fault {
	fs := []fault{
		{name: "agent-kill", inject: func(ctx context.Context, c *chaos) (func(context.Context) error, string, error) {
			n := c.node()
			if err := c.l.KillAgent(ctx, n.Index); err != nil {
				return nil, "", err
			}
			return func(ctx context.Context) error { return c.l.StartAgent(ctx, n.Index) },
				fmt.Sprintf("weftd on node %d, SIGKILL, started again 1 s later", n.Index), nil
		}},
		{name: "route-del", cutsPath: true, inject: func(ctx context.Context, c *chaos) (func(context.Context) error, string, error) {
			n := c.node()
			p := c.peer(n)
			h, err := handle(n)
			if err != nil {
				return nil, "", err
			}
			defer h.Close()
			dst := p.Subnet.Masked()
			routes, err := h.RouteList(netlinkx.RouteFilter{Family: netlinkx.FamilyV4})
			if err != nil {
				return nil, "", err
			}
			for _, r := range routes {
				if r.Dst == dst {
					return nil, fmt.Sprintf("node %d: route to node %d's %s", n.Index, p.Index, dst), h.RouteDel(r)
				}
			}
			return nil, "", fmt.Errorf("node %d has no route to %s", n.Index, dst)
		}},
		{name: "hostile-lease", inject: func(ctx context.Context, c *chaos) (func(context.Context) error, string, error) {
			if c.l.Store == StoreKube {
				return nil, "skipped (kube store: leases are Node objects)", nil
			}
			n := c.node()
			own := n.Subnet.Masked()
			kinds := []struct {
				key, what string
			}{
				{lease.Key(netip.PrefixFrom(plusLast(own.Addr(), 2), 32), netip.Prefix{}), "a /32 inside node's subnet"},
				{lease.Key(netip.PrefixFrom(plusLast(own.Addr(), 128), own.Bits()+1), netip.Prefix{}), "half of node's subnet"},
				{"10.244.0.0-17", "a catch-all /17"},
				{"192.0.2.0-24", "the underlay, outside Network"},
			}
			k := kinds[c.rnd.IntN(len(kinds))]
			cli, err := c.l.StoreClient(ctx)
			if err != nil {
				return nil, "", err
			}
			defer cli.Close()
			key := "/coreos.com/network/subnets/" + k.key
			val := `{"PublicIP":"192.0.2.66","BackendType":"` + c.l.Backend + `","BackendData":{"VNI":1,"VtepMAC":"02:66:00:00:00:01"}}`
			if _, err := cli.Put(ctx, key, val); err != nil {
				return nil, "", err
			}
			// Left for the agents to refuse while the lab heals, then removed.
			return func(ctx context.Context) error {
				cli, err := c.l.StoreClient(ctx)
				if err != nil {
					return err
				}
				defer cli.Close()
				_, err = cli.Delete(ctx, key)
				return err
			}, fmt.Sprintf("%s (%s), for node %d", key, k.what, n.Index), nil
		}},
		{name: "underlay-flap", cutsPath: true, inject: func(ctx context.Context, c *chaos) (func(context.Context) error, string, error) {
			n := c.node()
			if _, err := c.l.Exec(ctx, n.NS, "ip", "link", "set", "eth0", "down"); err != nil {
				return nil, "", err
			}
			return func(ctx context.Context) error {
				_, err := c.l.Exec(ctx, n.NS, "ip", "link", "set", "eth0", "up")
				return err
			}, fmt.Sprintf("node %d: eth0 down for 1 s", n.Index), nil
		}},
	}
	if c.l.Store != StoreKube {
		fs = append(fs, fault{name: "store-restart", inject: func(ctx context.Context, c *chaos) (func(context.Context) error, string, error) {
			// One member of several (the others keep a quorum), or the
			// only one.
			m := 1 + c.rnd.IntN(len(c.l.EtcdMembers))
			if err := c.l.KillEtcdMember(ctx, m); err != nil {
				return nil, "", err
			}
			restart := func(ctx context.Context) error { return c.l.StartEtcdMembers(ctx, m) }
			return restart, fmt.Sprintf("etcd member %d of %d stopped (SIGKILL), started again 1 s later", m, len(c.l.EtcdMembers)), nil
		}})
	}
	if dev := c.device(); dev != "" {
		fs = append(fs, fault{name: "device-del", cutsPath: true, inject: func(ctx context.Context, c *chaos) (func(context.Context) error, string, error) {
			n := c.node()
			_, err := c.l.Exec(ctx, n.NS, "ip", "link", "del", dev)
			return nil, fmt.Sprintf("node %d: %s", n.Index, dev), err
		}})
	}
	if c.l.Backend == "vxlan" {
		fs = append(fs,
			fault{name: "neigh-del", cutsPath: true, inject: func(ctx context.Context, c *chaos) (func(context.Context) error, string, error) {
				return c.delOnDevice(ctx, "neighbour", func(h *netlinkx.Handle, idx int) (string, error) {
					ns, err := h.NeighList(idx, netlinkx.FamilyV4)
					if err != nil || len(ns) == 0 {
						return "", fmt.Errorf("no neighbours: %v", err)
					}
					x := ns[c.rnd.IntN(len(ns))]
					return x.IP.String(), h.NeighDel(x)
				})
			}},
			fault{name: "fdb-del", cutsPath: true, inject: func(ctx context.Context, c *chaos) (func(context.Context) error, string, error) {
				return c.delOnDevice(ctx, "FDB entry", func(h *netlinkx.Handle, idx int) (string, error) {
					fs, err := h.FDBList(idx)
					if err != nil || len(fs) == 0 {
						return "", fmt.Errorf("no FDB entries: %v", err)
					}
					x := fs[c.rnd.IntN(len(fs))]
					return x.MAC.String(), h.FDBDel(x)
				})
			}},
		)
	}
	return fs
}

// plusLast is a with n added to its last byte.
func plusLast(a netip.Addr, n byte) netip.Addr {
	b := a.As4()
	b[3] += n
	return netip.AddrFrom4(b)
}

// delOnDevice deletes one entry on a random node's backend device.
func (c *chaos) delOnDevice(ctx context.Context, what string, del func(h *netlinkx.Handle, idx int) (string, error)) (func(context.Context) error, string, error) {
	n := c.node()
	h, err := handle(n)
	if err != nil {
		return nil, "", err
	}
	defer h.Close()
	l, err := h.LinkByName(c.device())
	if err != nil {
		return nil, "", err
	}
	which, err := del(h, l.Attrs().Index)
	return nil, fmt.Sprintf("node %d: %s %s", n.Index, what, which), err
}

// pinger is one `ping -D -O` from a pod to another, kept running.
type pinger struct {
	cmd  *exec.Cmd
	mu   sync.Mutex
	out  strings.Builder
	done chan struct{}
	once sync.Once
}

type echo struct {
	at   time.Time
	lost bool
}

func (c *chaos) startPingers(ctx context.Context) ([]*pinger, error) {
	var ps []*pinger
	pods := c.l.Pods()
	for _, a := range pods {
		for _, b := range pods {
			if a.NS == b.NS {
				continue
			}
			p := &pinger{done: make(chan struct{})}
			p.cmd = exec.Command("ip", "netns", "exec", a.NS, "ping", "-n", "-D", "-O", "-i", "0.1", b.IP.String())
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
// answered by the time the next is sent.
var echoLine = regexp.MustCompile(`^\[(\d+)\.(\d+)\] (?:(\d+) bytes from|(no answer yet))`)

func (p *pinger) echoes() []echo {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []echo
	for _, line := range strings.Split(p.out.String(), "\n") {
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
		out = append(out, echo{at: time.Unix(sec, ns), lost: m[4] != ""})
	}
	slices.SortFunc(out, func(a, b echo) int { return a.at.Compare(b.at) })
	return out
}
