package lab

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/netlinkx"
)

// The agent benchmark's figures: flannel's, measured the same way, and
// weft's targets.
// Issue 11's scale: 5,000 leases; flannel's figures on this machine.
const (
	agentBenchLeases   = 5000
	agentBenchAdds     = 200 // enough that p99 is not simply the slowest add
	targetStartup      = time.Second
	targetAddLatency   = 5 * time.Millisecond // p99
	targetPeakRSS      = 35 << 20
	flannelStartup     = "6.6–7.1 s"
	flannelAddLatency  = "12–17 ms"
	flannelPeakRSS     = "50 MiB"
	agentBenchNetwork  = "10.64.0.0/10"
	agentBenchSubnets  = 24
	agentBenchPoolLast = 8191 // SubnetMax index: the agent's own lease stays below the added ones
)

// agentBenchmark is the agent's start-up, event latency and memory.
func agentBenchmark() Benchmark {
	return Benchmark{Name: "agent", Backends: []string{config.BackendVXLAN}, Run: benchAgent}
}

// benchAgent measures one weftd against a store that already holds 5,000
// leases: the time from its start until every one of their routes is in the
// kernel, the time from one more lease written to its route, and its peak
// RSS. The agent runs on a node of its own (a fresh namespace on the lab's
// underlay) under a key prefix of its own, so the lab's agents neither see
// nor disturb it; the fake leases name PublicIPs in 198.18.0.0/15, which
// the vxlan backend programs without sending anything.
func benchAgent(ctx context.Context, l *Lab, o BenchOptions) ([]Result, error) {
	network := netip.MustParsePrefix(agentBenchNetwork)
	fakes, err := fakeVXLANLeases(network, agentBenchSubnets, 1, agentBenchLeases)
	if err != nil {
		return nil, err
	}
	adds, err := fakeVXLANLeases(network, agentBenchSubnets, agentBenchPoolLast+1, agentBenchAdds)
	if err != nil {
		return nil, err
	}
	cli, err := l.StoreClient(ctx)
	if err != nil {
		return nil, err
	}
	defer cli.Close()

	var suffix [3]byte
	_, _ = rand.Read(suffix[:])
	prefix := "/weft-bench-" + hex.EncodeToString(suffix[:])
	poolMax := subnetAt(network, agentBenchSubnets, agentBenchPoolLast).Addr()
	conf := fmt.Sprintf(`{"Network":%q,"SubnetLen":%d,"SubnetMax":%q,"Backend":{"Type":"vxlan"}}`, network, agentBenchSubnets, poolMax)
	o.progress("  writing %d leases under %s", len(fakes), prefix)
	etcdLeases, err := writeFakeLeases(ctx, cli, prefix, conf, fakes)
	defer func() {
		// A fresh budget: ctx may be what ended the run.
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 20*time.Second)
		defer cancel()
		_, _ = cli.Delete(cctx, prefix+"/", clientv3.WithPrefix())
		revokeAll(cctx, cli, etcdLeases)
	}()
	if err != nil {
		return nil, err
	}

	node, err := l.addBenchNode(ctx)
	if err != nil {
		return nil, err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		node.remove(cctx)
	}()

	rw, err := watchRoutes(ctx, node.ns)
	if err != nil {
		return nil, err
	}
	defer rw.close()

	args := []string{
		"--etcd-endpoints=" + l.State.EtcdEndpoint,
		"--etcd-prefix=" + prefix,
		"--iface=eth0",
		"--subnet-file=" + filepath.Join(node.dir, "subnet.env"),
	}
	want := map[netip.Prefix]bool{}
	for _, f := range fakes {
		want[f.Subnet] = true
	}
	pid, startup, selfNote, err := startTimed(ctx, filepath.Join(l.BinDir, "weftd"), node, args, nil, "leases", want, rw, o)
	if err != nil {
		return nil, err
	}

	// One lease at a time, each added to a quiet agent.
	var lat, puts []time.Duration
	for _, a := range adds {
		val, err := lease.MarshalAttrs(a.Attrs)
		if err != nil {
			return nil, err
		}
		g, err := cli.Grant(ctx, int64(time.Hour/time.Second))
		if err != nil {
			return nil, fmt.Errorf("etcd lease for lease %s: %w", a.Subnet, err)
		}
		etcdLeases = append(etcdLeases, g.ID)
		time.Sleep(50 * time.Millisecond)
		t0 := time.Now()
		if _, err := cli.Put(ctx, prefix+"/subnets/"+a.Key(), string(val), clientv3.WithLease(g.ID)); err != nil {
			return nil, fmt.Errorf("writing lease %s: %w", a.Subnet, err)
		}
		puts = append(puts, time.Since(t0))
		wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		at, _, err := rw.waitAt(wctx, map[netip.Prefix]bool{a.Subnet: true}, pid)
		cancel()
		if err != nil {
			return nil, fmt.Errorf("route for new lease %s: %w", a.Subnet, err)
		}
		lat = append(lat, at.Sub(t0))
	}
	med, p99 := quantile(lat, 0.5), quantile(lat, 0.99)
	o.progress("  new lease -> route: p50 %s, p99 %s; all: %v", med.Round(10*time.Microsecond), p99.Round(10*time.Microsecond), roundAll(lat))
	hwm, anon, file, err := memoryOf(pid)
	if err != nil {
		return nil, err
	}

	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	return []Result{
		{Section: "agent", Metric: fmt.Sprintf("start → %d leases' routes", len(fakes)), Value: startup.Seconds(), Unit: "s",
			Note: fmt.Sprintf("%s target ≤ %s (flannel %s)%s", verdict(startup.Seconds(), targetStartup.Seconds(), true), targetStartup, flannelStartup, selfNote)},
		{Section: "agent", Metric: "new lease → route, p50", Value: ms(med), Unit: "ms",
			Note: fmt.Sprintf("%d adds one at a time, from Put sent to the route's netlink notification (Put itself: p50 %.1f ms, p99 %.1f ms)", len(lat), ms(quantile(puts, 0.5)), ms(quantile(puts, 0.99)))},
		{Section: "agent", Metric: "new lease → route, p99", Value: ms(p99), Unit: "ms",
			Note: fmt.Sprintf("%s target ≤ %s (flannel %s)", verdict(ms(p99), ms(targetAddLatency), true), targetAddLatency, flannelAddLatency)},
		{Section: "agent", Metric: "peak RSS (VmHWM)", Value: float64(hwm) / (1 << 20), Unit: "MiB",
			Note: fmt.Sprintf("%s target ≤ %d MiB (flannel %s); %d leases; at the end RssAnon %d MiB, RssFile %d MiB (the binary's pages)",
				verdict(float64(hwm), targetPeakRSS, true), targetPeakRSS>>20, flannelPeakRSS, len(fakes)+len(adds)+1, anon>>20, file>>20)},
	}, nil
}

// writeFakeLeases stores the network config and leases under prefix. Each
// lease is bound to an etcd lease of its own, as each node's is, so that the
// agent looks up a thousand TTLs as it would in a real cluster; an hour long,
// so that they go even if the clean-up does not run. It returns the etcd
// leases, for the clean-up and for more leases.
func writeFakeLeases(ctx context.Context, cli *clientv3.Client, prefix, conf string, ls []lease.Lease) ([]clientv3.LeaseID, error) {
	ids := make([]clientv3.LeaseID, len(ls)+1)
	err := parallel(ctx, len(ids), 16, func(i int) error {
		g, err := cli.Grant(ctx, int64(time.Hour/time.Second))
		if err != nil {
			return fmt.Errorf("etcd lease for a fake lease: %w", err)
		}
		ids[i] = g.ID
		return nil
	})
	if err != nil {
		return ids, err
	}
	if _, err := cli.Put(ctx, prefix+"/config", conf, clientv3.WithLease(ids[len(ls)])); err != nil {
		return ids, fmt.Errorf("writing %s/config: %w", prefix, err)
	}
	// etcd takes at most 128 operations in one transaction by default.
	const batch = 100
	for i := 0; i < len(ls); i += batch {
		var ops []clientv3.Op
		for k := i; k < min(i+batch, len(ls)); k++ {
			val, err := lease.MarshalAttrs(ls[k].Attrs)
			if err != nil {
				return ids, err
			}
			ops = append(ops, clientv3.OpPut(prefix+"/subnets/"+ls[k].Key(), string(val), clientv3.WithLease(ids[k])))
		}
		if _, err := cli.Txn(ctx).Then(ops...).Commit(); err != nil {
			return ids, fmt.Errorf("writing fake leases: %w", err)
		}
	}
	return ids, nil
}

// revokeAll revokes the etcd leases, deleting the keys bound to them.
func revokeAll(ctx context.Context, cli *clientv3.Client, ids []clientv3.LeaseID) {
	_ = parallel(ctx, len(ids), 16, func(i int) error {
		if ids[i] != 0 {
			_, _ = cli.Revoke(ctx, ids[i])
		}
		return nil
	})
}

// parallel runs f(0..n-1), at most width at a time, and returns the first
// error.
func parallel(ctx context.Context, n, width int, f func(i int) error) error {
	sem := make(chan struct{}, width)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
			wg.Wait()
			return ctx.Err()
		}
		wg.Add(1)
		go func() {
			defer func() { <-sem; wg.Done() }()
			errs[i] = f(i)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// startTimed starts weftd (the binary's path) on node with args and env, waits until every
// route of want is in node's kernel (what the agent's start costs), and
// returns its pid, that time, and the agent's own figure as a note. what
// names the leases for errors.
func startTimed(ctx context.Context, weftd string, node *benchNode, args, env []string, what string, want map[netip.Prefix]bool,
	rw *routeWatch, o BenchOptions) (int, time.Duration, string, error) {
	o.progress("  starting weftd on %s", node.ns)
	start := time.Now()
	routes := len(want) // waitAt consumes want
	pid, err := startDetached(node.ns, weftd, args, env, node.log)
	if err != nil {
		return 0, 0, "", err
	}
	wctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	allAt, how, err := rw.waitAt(wctx, want, pid)
	cancel()
	if err != nil {
		return 0, 0, "", fmt.Errorf("weftd with %d %s: %w; last lines of %s:\n%s", routes, what, err, node.log, tail(node.log, 10))
	}
	startup := allAt.Sub(start)
	o.progress("  %d routes %s after start (%s)", routes, startup.Round(time.Millisecond), how)
	// The agent's own figure, which it logs once ready.
	var selfNote string
	_ = poll(ctx, 50*time.Millisecond, func() error {
		data, err := os.ReadFile(node.log)
		if err != nil {
			return err
		}
		if n, d, ok := parseProgrammed(data); ok {
			selfNote = fmt.Sprintf("; agent logs \"programmed %d leases in %s\"", n, d)
			return nil
		}
		if time.Since(allAt) > 5*time.Second {
			return permanent(errors.New("no figure"))
		}
		return errors.New("not yet")
	})
	return pid, startup, selfNote, nil
}

// memoryOf reads weftd's peak resident set (VmHWM) and, as they are now,
// its anonymous and file-backed (the binary's pages) parts, in bytes.
func memoryOf(pid int) (hwm, anon, file int64, err error) {
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, 0, fmt.Errorf("weftd status: %w", err)
	}
	if hwm, err = parseVmHWM(status); err != nil {
		return 0, 0, 0, err
	}
	for line := range strings.Lines(string(status)) {
		f := strings.Fields(line)
		if len(f) != 3 || f[2] != "kB" {
			continue
		}
		v, err := strconv.ParseInt(f[1], 10, 64)
		if err != nil {
			continue
		}
		switch f[0] {
		case "RssAnon:":
			anon = v << 10
		case "RssFile:":
			file = v << 10
		}
	}
	return hwm, anon, file, nil
}

// routeWatch follows the routes of a bench node's namespace: their netlink
// notifications, and a handle to list them once notifications are lost.
type routeWatch struct {
	events   <-chan netlinkx.RouteEvent
	overflow chan error
	h        *netlinkx.Handle
	stop     context.CancelFunc
}

// watchRoutes subscribes to the routes of namespace ns.
func watchRoutes(ctx context.Context, ns string) (*routeWatch, error) {
	sctx, stop := context.WithCancel(ctx)
	rw := &routeWatch{overflow: make(chan error, 1), stop: stop}
	var err error
	rw.events, err = netlinkx.SubscribeRoutes(sctx, nsPath(ns), func(err error) {
		select {
		case rw.overflow <- err:
		default:
		}
	})
	if err != nil {
		stop()
		return nil, err
	}
	if rw.h, err = netlinkx.NewAt(nsPath(ns)); err != nil {
		stop()
		return nil, err
	}
	return rw, nil
}

func (rw *routeWatch) close() {
	rw.stop()
	rw.h.Close()
}

// waitAt waits until every prefix in want has been added as a route and
// returns when the last one was. It reads route events; if the
// subscription overflows, it falls back to listing the routes every 2 ms
// (and says so). want is consumed.
func (rw *routeWatch) waitAt(ctx context.Context, want map[netip.Prefix]bool, pid int) (time.Time, string, error) {
	aliveT := time.NewTicker(200 * time.Millisecond)
	defer aliveT.Stop()
	events := rw.events
	for len(want) > 0 {
		select {
		case ev, ok := <-events:
			if !ok {
				events = nil
				continue
			}
			if !ev.Deleted && want[ev.Route.Dst] {
				delete(want, ev.Route.Dst)
				if len(want) == 0 {
					return ev.At, "route events", nil
				}
			}
		case err := <-rw.overflow:
			return pollRoutes(ctx, rw.h, want, fmt.Sprintf("listing every 2 ms: route events lost (%v)", err))
		case <-aliveT.C:
			if !alive(pid) {
				return time.Time{}, "", errors.New("weftd exited")
			}
		case <-ctx.Done():
			return time.Time{}, "", fmt.Errorf("%d routes missing: %w", len(want), ctx.Err())
		}
	}
	return time.Now(), "", nil
}

func pollRoutes(ctx context.Context, h *netlinkx.Handle, want map[netip.Prefix]bool, how string) (time.Time, string, error) {
	var at time.Time
	err := poll(ctx, 2*time.Millisecond, func() error {
		rs, err := h.RouteList(netlinkx.RouteFilter{Family: netlinkx.FamilyV4})
		if err != nil {
			return err
		}
		at = time.Now()
		n := 0
		for _, r := range rs {
			if want[r.Dst] {
				n++
			}
		}
		if n < len(want) {
			return fmt.Errorf("%d of %d routes", n, len(want))
		}
		return nil
	})
	return at, how, err
}

// benchNode is a node namespace outside the lab's plan, on its underlay.
type benchNode struct {
	ns, dir, log string
	addr         netip.Addr // eth0's, on the underlay
}

// addBenchNode makes node len(Nodes)+1: a namespace named as the lab's
// nodes are (so that Down removes it even if this process dies), with eth0
// on the underlay bridge. It runs no agent.
func (l *Lab) addBenchNode(ctx context.Context) (*benchNode, error) {
	i := len(l.Nodes) + 1
	if i >= 254 {
		return nil, fmt.Errorf("lab %s: no address left for a bench node", l.Name)
	}
	n := &benchNode{ns: fmt.Sprintf("%s-n%d", l.Name, i), dir: filepath.Join(l.Dir, "bench-n"+strconv.Itoa(i)), addr: netip.AddrFrom4([4]byte{192, 0, 2, byte(i)})}
	n.log = filepath.Join(n.dir, "weftd.log")
	if err := os.MkdirAll(n.dir, 0o755); err != nil {
		return nil, err
	}
	port := "n" + strconv.Itoa(i)
	if err := addNS(ctx, n.ns); err != nil {
		return nil, err
	}
	if err := plugIn(l.UnderlayNS, port, n.ns, netip.PrefixFrom(n.addr, 24)); err != nil {
		n.remove(ctx)
		return nil, err
	}
	return n, nil
}

// remove ends every process in the node and deletes it, with its veth.
func (n *benchNode) remove(ctx context.Context) {
	if pids, err := nsPIDs(ctx, n.ns); err == nil {
		_ = terminate(ctx, pids, 10*time.Second)
	}
	_ = ip(ctx, "netns", "del", n.ns)
	_ = os.RemoveAll(n.dir)
}
