package e2e

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/weft-net/weft/internal/lab"
	"github.com/weft-net/weft/internal/lab/labtest"
	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/netlinkx"
	"github.com/weft-net/weft/internal/syncbuf"
)

const (
	storePrefix  = "/coreos.com/network"
	configKey    = storePrefix + "/config"
	vxlanDevice  = "flannel.1"
	vxlanDevice6 = "flannel-v6.1"
)

func TestMain(m *testing.M) { os.Exit(labtest.Main(m)) }

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// env is one lab under test, with a store client and a netlink handle on
// every node.
type env struct {
	t   *testing.T
	l   *lab.Lab
	cli *clientv3.Client
	h   map[int]*netlinkx.Handle // by node index
}

// upLab brings up a lab named for this run and takes it down when the test
// ends, failed or not; a failed test gets the agents' last log lines.
func upLab(t *testing.T, ctx context.Context, o lab.Options) *env {
	t.Helper()
	var b [3]byte
	_, _ = rand.Read(b[:])
	o.Name = "e2e-" + hex.EncodeToString(b[:])
	o.Root = t.TempDir()
	o.BinDir, o.CNIBinDir = labtest.Binaries(t)
	o.Log = slog.New(slog.NewTextHandler(testWriter{t}, &slog.HandlerOptions{Level: slog.LevelWarn}))
	l, err := lab.Up(ctx, o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, n := range l.Nodes {
				t.Logf("last lines of node %d's %s:\n%s", n.Index, n.Log, tailFile(n.Log, 25))
			}
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := l.Down(ctx, lab.DownOptions{}); err != nil {
			t.Errorf("lab down: %v", err)
		}
		if left := l.Leftovers(); len(left) != 0 {
			t.Errorf("namespaces left after down: %v", left)
		}
	})
	e := &env{t: t, l: l, h: map[int]*netlinkx.Handle{}}
	// Registered after the lab's clean-up, so closed before it runs: open
	// sockets would keep the namespaces alive.
	e.cli, err = l.StoreClient(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.cli.Close() })
	for _, n := range l.Nodes {
		h, err := netlinkx.NewAt(filepath.Join("/run/netns", n.NS))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(h.Close)
		e.h[n.Index] = h
	}
	return e
}

func tailFile(path string, n int) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}

// subnet is node i's subnet, as its subnet.env last said.
// doctorReport is what weft doctor --json prints.
type doctorReport struct {
	OK      bool
	Results []struct{ Check, Status, Message, Hint string }
}

// doctor runs weft doctor --json in node i (its running agent's settings)
// and returns the report and whether it exited 0.
func (e *env) doctor(t *testing.T, ctx context.Context, i int) (doctorReport, bool) {
	t.Helper()
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", e.l.Node(i).NS, filepath.Join(e.l.BinDir, "weft"), "doctor", "--json")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	var r doctorReport
	if jerr := json.Unmarshal(out, &r); jerr != nil {
		t.Fatalf("weft doctor in node %d: %v, %v\n%s\n%s", i, err, jerr, out, stderr.String())
	}
	return r, err == nil
}

func (e *env) subnet(i int) netip.Prefix { return e.l.Node(i).Subnet.Masked() }

// subnet6 is node i's IPv6 subnet (invalid without IPv6).
func (e *env) subnet6(i int) netip.Prefix {
	if sn := e.l.Node(i).Subnet6; sn.IsValid() {
		return sn.Masked()
	}
	return netip.Prefix{}
}

// leaseKey is the store key of node i's lease (flannel's dual key in a
// dual-stack lab).
func (e *env) leaseKey(i int) string {
	return storePrefix + "/subnets/" + lease.Key(e.subnet(i), e.subnet6(i))
}

// getLease reads a lease: its attributes, and whether it exists.
func (e *env) getLease(ctx context.Context, key string) (lease.Attrs, bool, error) {
	resp, err := e.cli.Get(ctx, key)
	if err != nil || len(resp.Kvs) == 0 {
		return lease.Attrs{}, false, err
	}
	a, err := lease.UnmarshalAttrs(resp.Kvs[0].Value)
	return a, true, err
}

func (e *env) put(ctx context.Context, key, val string) {
	e.t.Helper()
	if _, err := e.cli.Put(ctx, key, val); err != nil {
		e.t.Fatalf("put %s: %v", key, err)
	}
}

func (e *env) del(ctx context.Context, key string) {
	e.t.Helper()
	resp, err := e.cli.Delete(ctx, key)
	if err != nil {
		e.t.Fatalf("delete %s: %v", key, err)
	}
	if resp.Deleted != 1 {
		e.t.Fatalf("delete %s: %d keys deleted", key, resp.Deleted)
	}
}

// peer is what a vxlan node publishes and the others program; the IPv6
// half (flannel-v6.1's) is set in a lab with IPv6.
type peer struct {
	index  int
	subnet netip.Prefix
	public netip.Addr
	mac    netlinkx.MAC

	subnet6 netip.Prefix
	public6 netip.Addr
	mac6    netlinkx.MAC
}

// peer reads node i's VTEP MACs off its devices.
func (e *env) peer(i int) peer {
	e.t.Helper()
	devMAC := func(name string) netlinkx.MAC {
		l, err := e.h[i].LinkByName(name)
		if err != nil {
			e.t.Fatalf("node %d: %v", i, err)
		}
		mac, err := netlinkx.MACFrom(l.Attrs().HardwareAddr)
		if err != nil {
			e.t.Fatal(err)
		}
		return mac
	}
	p := peer{index: i}
	if e.l.HasIPv4() {
		p.subnet, p.public, p.mac = e.subnet(i), e.l.Node(i).PublicIP, devMAC(vxlanDevice)
	}
	if e.l.HasIPv6() {
		p.subnet6, p.public6, p.mac6 = e.subnet6(i), e.l.Node(i).PublicIPv6, devMAC(vxlanDevice6)
	}
	return p
}

// others are the peers of node i.
func (e *env) others(i int) []peer {
	var out []peer
	for _, n := range e.l.Nodes {
		if n.Index != i {
			out = append(out, e.peer(n.Index))
		}
	}
	return out
}

// fabricErr says what node i's vxlan datapath lacks for peers, or nil:
// the device with its address, and per peer the route, the neighbour and
// the FDB entry; for each family of the lab (flannel.1 and flannel-v6.1).
func (e *env) fabricErr(i int, peers []peer) error {
	if e.l.HasIPv4() {
		if err := e.familyFabricErr(i, false, peers); err != nil {
			return err
		}
	}
	if e.l.HasIPv6() {
		return e.familyFabricErr(i, true, peers)
	}
	return nil
}

// half is p's view in one family: subnet, public address, VtepMAC.
func (p peer) half(v6 bool) (netip.Prefix, netip.Addr, netlinkx.MAC) {
	if v6 {
		return p.subnet6, p.public6, p.mac6
	}
	return p.subnet, p.public, p.mac
}

func (e *env) familyFabricErr(i int, v6 bool, peers []peer) error {
	h := e.h[i]
	dev, fam, ownSubnet := vxlanDevice, netlinkx.FamilyV4, e.subnet(i)
	if v6 {
		dev, fam, ownSubnet = vxlanDevice6, netlinkx.FamilyV6, e.subnet6(i)
	}
	l, err := h.LinkByName(dev)
	if err != nil {
		return fmt.Errorf("node %d: %s: %w", i, dev, err)
	}
	idx := l.Attrs().Index
	addrs, err := h.AddrList(l, fam)
	if err != nil {
		return err
	}
	own := netip.PrefixFrom(ownSubnet.Addr(), ownSubnet.Addr().BitLen())
	if !contains(addrs, own) {
		return fmt.Errorf("node %d: %s has addresses %v, want %s", i, dev, addrs, own)
	}
	routes, err := h.RouteList(netlinkx.RouteFilter{Family: fam, LinkIndex: idx})
	if err != nil {
		return err
	}
	neighs, err := h.NeighList(idx, fam)
	if err != nil {
		return err
	}
	fdb, err := h.FDBList(idx)
	if err != nil {
		return err
	}
	for _, p := range peers {
		sn, pub, mac := p.half(v6)
		r := netlinkx.Route{Dst: sn, Gw: sn.Addr(), LinkIndex: idx, OnLink: true}
		n := netlinkx.Neigh{LinkIndex: idx, IP: sn.Addr(), MAC: mac}
		f := netlinkx.FDB{LinkIndex: idx, MAC: mac, Dst: pub}
		switch {
		case !contains(routes, r):
			return fmt.Errorf("node %d: no route %s", i, r)
		case !containsFunc(neighs, func(x netlinkx.Neigh) bool { return x.IP == n.IP && x.MAC == n.MAC }):
			return fmt.Errorf("node %d: no neighbour %s", i, n)
		case !contains(fdb, f):
			return fmt.Errorf("node %d: no FDB entry %s", i, f)
		}
	}
	return nil
}

// goneErr says what node i still holds for p, or nil when nothing, in
// each family of the lab.
func (e *env) goneErr(i int, p peer) error {
	for _, v6 := range e.l.Families() {
		if err := e.familyGoneErr(i, v6, p); err != nil {
			return err
		}
	}
	return nil
}

func (e *env) familyGoneErr(i int, v6 bool, p peer) error {
	h := e.h[i]
	dev, fam := vxlanDevice, netlinkx.FamilyV4
	if v6 {
		dev, fam = vxlanDevice6, netlinkx.FamilyV6
	}
	sn, _, mac := p.half(v6)
	l, err := h.LinkByName(dev)
	if err != nil {
		return err
	}
	idx := l.Attrs().Index
	routes, err := h.RouteList(netlinkx.RouteFilter{Family: fam})
	if err != nil {
		return err
	}
	neighs, err := h.NeighList(idx, fam)
	if err != nil {
		return err
	}
	fdb, err := h.FDBList(idx)
	if err != nil {
		return err
	}
	if containsFunc(routes, func(r netlinkx.Route) bool { return r.Dst == sn }) {
		return fmt.Errorf("node %d still routes %s", i, sn)
	}
	if containsFunc(neighs, func(n netlinkx.Neigh) bool { return n.IP == sn.Addr() }) {
		return fmt.Errorf("node %d still has a neighbour %s", i, sn.Addr())
	}
	if containsFunc(fdb, func(f netlinkx.FDB) bool { return f.MAC == mac }) {
		return fmt.Errorf("node %d still has an FDB entry for %s", i, mac)
	}
	return nil
}

// converged waits until every node's datapath is complete.
func (e *env) converged(ctx context.Context, within time.Duration) {
	e.t.Helper()
	for _, n := range e.l.Nodes {
		peers := e.others(n.Index)
		if _, err := waitFor(ctx, within, func() error { return e.fabricErr(n.Index, peers) }); err != nil {
			e.t.Fatal(err)
		}
	}
}

func contains[T comparable](s []T, v T) bool {
	return containsFunc(s, func(x T) bool { return x == v })
}

func containsFunc[T any](s []T, f func(T) bool) bool {
	for _, x := range s {
		if f(x) {
			return true
		}
	}
	return false
}

// waitFor calls f every 50 ms until it returns nil or within has passed,
// and returns how long it took.
func waitFor(ctx context.Context, within time.Duration, f func() error) (time.Duration, error) {
	return waitEvery(ctx, 50*time.Millisecond, within, f)
}

// waitEvery calls f every `every` until it returns nil or within has
// passed, and returns how long it took.
func waitEvery(ctx context.Context, every, within time.Duration, f func() error) (time.Duration, error) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, within)
	defer cancel()
	for {
		err := f()
		if err == nil {
			return time.Since(start), nil
		}
		select {
		case <-ctx.Done():
			return time.Since(start), fmt.Errorf("after %s: %w", time.Since(start).Round(time.Millisecond), err)
		case <-time.After(every):
		}
	}
}

// scenario is one step of an end-to-end test run on a shared lab.
type scenario[E any] struct {
	name string
	run  func(*testing.T, context.Context, E)
}

// runScenarios runs each scenario as a subtest on the lab of base (e is
// base or an environment around it), checks the full mesh after each, and
// stops at the first failure: the lab may be left broken, and later
// scenarios would only report that.
func runScenarios[E any](t *testing.T, ctx context.Context, base *env, e E, ss []scenario[E]) {
	for _, s := range ss {
		ok := t.Run(s.name, func(t *testing.T) {
			parent := base.t
			base.t = t
			defer func() { base.t = parent }()
			s.run(t, ctx, e)
			base.mesh(ctx)
		})
		if !ok {
			t.Fatalf("scenario %s failed; skipping the rest", s.name)
		}
	}
}

// mesh pings every pod from every pod and every node, over each family
// of the lab.
func (e *env) mesh(ctx context.Context) {
	e.t.Helper()
	for _, v6 := range e.l.Families() {
		m, err := e.l.Check(ctx, lab.CheckOptions{NodeToPod: true, IPv6: v6})
		if err != nil {
			e.t.Fatal(err)
		}
		if m.Failures() != 0 || m.Tested() == 0 {
			var b strings.Builder
			m.Render(&b)
			e.t.Fatalf("mesh (IPv6 %v):\n%s", v6, b.String())
		}
	}
}

// logMark is a position in a node's log; since reads what came after it.
type logMark struct {
	path string
	off  int64
}

func (e *env) mark(i int) logMark {
	path := e.l.Node(i).Log
	fi, err := os.Stat(path)
	if err != nil {
		return logMark{path: path}
	}
	return logMark{path: path, off: fi.Size()}
}

func (m logMark) since() string {
	data, err := os.ReadFile(m.path)
	if err != nil || int64(len(data)) < m.off {
		return ""
	}
	return string(data[m.off:])
}

// waitLog waits until the log after m has a line holding every one of
// want.
func (e *env) waitLog(ctx context.Context, m logMark, within time.Duration, want ...string) string {
	e.t.Helper()
	var found string
	_, err := waitFor(ctx, within, func() error {
		for _, line := range strings.Split(m.since(), "\n") {
			ok := true
			for _, w := range want {
				ok = ok && strings.Contains(line, w)
			}
			if ok {
				found = line
				return nil
			}
		}
		return fmt.Errorf("no log line with %q in %s", want, m.path)
	})
	if err != nil {
		e.t.Fatalf("%v; it has:\n%s", err, m.since())
	}
	return found
}

// repairsSettled waits until node i's agent has logged no repair for
// longer than its repair rate limit (500 ms): a repair still pending (the
// agent setting its own recreated device up is a change too) would fix the
// next fault and pass for its event-driven repair.
func (e *env) repairsSettled(ctx context.Context, i int) {
	e.t.Helper()
	const quiet = 700 * time.Millisecond
	if _, err := waitEvery(ctx, 0, 5*time.Second, func() error {
		m := e.mark(i)
		time.Sleep(quiet)
		if strings.Contains(m.since(), `msg="repairing:`) {
			return fmt.Errorf("node %d still repairing", i)
		}
		return nil
	}); err != nil {
		e.t.Fatal(err)
	}
}

// alive fails the test unless node i's agent runs.
func (e *env) alive(i int) {
	e.t.Helper()
	if _, err := e.l.AgentPID(i); err != nil {
		e.t.Fatalf("agent of node %d: %v; last lines:\n%s", i, err, tailFile(e.l.Node(i).Log, 15))
	}
}

// notReady checks that node i's /readyz answers 503 with a reason holding
// want.
func (e *env) notReady(ctx context.Context, i int, want string) {
	e.t.Helper()
	code, body, err := e.l.Readyz(ctx, i)
	if err != nil {
		e.t.Fatalf("node %d /readyz: %v", i, err)
	}
	if code != 503 || !strings.Contains(body, want) {
		e.t.Fatalf("node %d /readyz: %d %q, want 503 with %q", i, code, body, want)
	}
}

// agentProc is a weftd this test started itself, so that it can see how
// the process exits.
type agentProc struct {
	cmd  *exec.Cmd
	done chan struct{}
}

// startOwnAgent starts weftd on node i with argv (as read from a running
// agent's /proc/<pid>/cmdline), logging to the node's log, and records it
// in the node's pid file so that the lab's calls see it.
func (e *env) startOwnAgent(i int, argv []string) *agentProc {
	e.t.Helper()
	n := e.l.Node(i)
	logf, err := os.OpenFile(n.Log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		e.t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command("ip", append([]string{"netns", "exec", n.NS}, argv...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "FLANNELD_") {
			cmd.Env = append(cmd.Env, kv)
		}
	}
	if err := cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	p := &agentProc{cmd: cmd, done: make(chan struct{})}
	go func() {
		_ = cmd.Wait()
		close(p.done)
	}()
	e.t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-p.done
	})
	if err := os.WriteFile(n.PIDFile, []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o644); err != nil {
		e.t.Fatal(err)
	}
	return p
}

// terminate sends SIGTERM and returns the exit code.
func (p *agentProc) terminate(within time.Duration) (int, error) {
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return 0, err
	}
	select {
	case <-p.done:
		return p.cmd.ProcessState.ExitCode(), nil
	case <-time.After(within):
		return 0, fmt.Errorf("weftd still running %s after SIGTERM", within)
	}
}

// cmdline reads a process's argv.
func cmdline(pid int) ([]string, error) {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return nil, err
	}
	return strings.Split(strings.TrimRight(string(data), "\x00"), "\x00"), nil
}

// pinger is `ping -i 0.05` running in the background.
type pinger struct {
	cmd  *exec.Cmd
	out  *syncbuf.Buffer
	done chan struct{}
}

// startPing pings dst from namespace ns every 50 ms until stopped; -O
// makes ping report each echo that got no answer before the next was sent.
// It returns once the first reply is in.
func (e *env) startPing(ctx context.Context, ns string, dst netip.Addr) *pinger {
	e.t.Helper()
	p := &pinger{out: &syncbuf.Buffer{}, done: make(chan struct{})}
	p.cmd = exec.Command("ip", "netns", "exec", ns, "ping", "-n", "-O", "-i", "0.05", dst.String())
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		e.t.Fatal(err)
	}
	go func() {
		_ = p.cmd.Wait()
		close(p.done)
	}()
	e.t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.done
	})
	if _, err := waitFor(ctx, 5*time.Second, func() error {
		if strings.Contains(p.out.String(), "bytes from") {
			return nil
		}
		return errors.New("no reply yet")
	}); err != nil {
		e.t.Fatalf("ping %s from %s: %v: %s", dst, ns, err, p.out.String())
	}
	return p
}

var pingStats = regexp.MustCompile(`(\d+) packets transmitted, (\d+) received`)

// stop interrupts ping and returns how many echoes it sent, how many got
// an answer and how many it reported unanswered before sending the next.
func (p *pinger) stop() (sent, received, unanswered int, err error) {
	_ = p.cmd.Process.Signal(os.Interrupt)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		return 0, 0, 0, errors.New("ping did not stop")
	}
	out := p.out.String()
	m := pingStats.FindStringSubmatch(out)
	if m == nil {
		return 0, 0, 0, fmt.Errorf("no statistics in ping's output:\n%s", out)
	}
	sent, _ = strconv.Atoi(m[1])
	received, _ = strconv.Atoi(m[2])
	return sent, received, strings.Count(out, "no answer yet"), nil
}
