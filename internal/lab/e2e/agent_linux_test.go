package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/lab"
	"github.com/weft-net/weft/internal/lab/labtest"
	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/netlinkx"
)

// The agents' resync period in these labs, and the slack a heal may take
// beyond it on a busy machine.
const (
	resync = 3 * time.Second
	slack  = 3 * time.Second
	// eventRepair bounds a repair triggered by the kernel's notification:
	// the target is 1 s; the rest is for a loaded machine, and it stays
	// under resync so that a periodic pass cannot pass for it.
	eventRepair = 2500 * time.Millisecond
	// configRetry is the daemon's default re-read interval of a bad config.
	configRetry = 5 * time.Second
)

// TestVXLANScenarios runs the agent's failure scenarios one after another
// in one three-node vxlan lab; each leaves the lab whole for the next.
func TestVXLANScenarios(t *testing.T) {
	labtest.RequireRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	e := upLab(t, ctx, lab.Options{
		Nodes: 3, PodsPerNode: 1, Backend: "vxlan",
		WeftdArgs: []string{"--resync-period=" + resync.String()},
	})
	e.converged(ctx, 10*time.Second)

	runScenarios(t, ctx, e, e, []scenario[*env]{
		{"RestartKeepsSubnetAndTraffic", testRestart},
		{"DeletedDeviceAndRouteHeal", testHeal},
		{"DeletedLease", testDeletedLease},
		{"GarbageLease", testGarbageLease},
		{"HostileLeases", testHostileLeases},
		{"BadConfig", testBadConfig},
		{"PoolExhausted", testPoolExhausted},
	})
}

// An agent stopped with SIGTERM exits 0 and, started again, keeps its
// subnet; pods on its node keep talking to other nodes throughout, since
// the datapath stays in the kernel.
func testRestart(t *testing.T, ctx context.Context, e *env) {
	const i = 2
	n := e.l.Node(i)
	envBefore, err := os.ReadFile(n.SubnetFile)
	if err != nil {
		t.Fatal(err)
	}
	key := e.leaseKey(i)
	if a, ok, err := e.getLease(ctx, key); err != nil || !ok || a.PublicIP != n.PublicIP {
		t.Fatalf("lease %s before: %+v, %v, %v", key, a, ok, err)
	}
	pid, err := e.l.AgentPID(i)
	if err != nil {
		t.Fatal(err)
	}
	argv, err := cmdline(pid)
	if err != nil {
		t.Fatal(err)
	}

	p := e.startPing(ctx, n.Pods[0].NS, e.l.Node(1).Pods[0].IP)
	var p6 *pinger // and over IPv6, in a lab with it
	if e.l.HasIPv6() {
		p6 = e.startPing(ctx, n.Pods[0].NS, e.l.Node(1).Pods[0].IP6)
	}

	// First round: the lab stops the agent it started; the exit is
	// visible in the log (main logs "weftd stopped" at INFO only on the
	// way to exit status 0).
	m := e.mark(i)
	if err := e.l.StopAgent(ctx, i); err != nil {
		t.Fatal(err)
	}
	if out := m.since(); !strings.Contains(out, `level=INFO msg="weftd stopped"`) || strings.Contains(out, "level=ERROR") {
		t.Fatalf("agent's last words:\n%s", out)
	}
	time.Sleep(time.Second) // pods talk with the agent down
	own := e.startOwnAgent(i, argv)
	if err := e.l.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}

	// Second round on a process of our own: SIGTERM, exit status 0.
	time.Sleep(500 * time.Millisecond)
	code, err := own.terminate(15 * time.Second)
	if err != nil || code != 0 {
		t.Fatalf("weftd after SIGTERM: exit %d, %v; last lines:\n%s", code, err, tailFile(n.Log, 10))
	}
	time.Sleep(time.Second)
	if err := e.l.StartAgent(ctx, i); err != nil {
		t.Fatal(err)
	}
	if err := e.l.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	time.Sleep(500 * time.Millisecond)

	sent, received, unanswered, err := p.stop()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("ping every 50 ms across two stops and starts: %d sent, %d received, %d reported unanswered", sent, received, unanswered)
	// The echo in flight when ping is interrupted may go uncounted; any
	// earlier loss shows as "no answer yet".
	if unanswered != 0 || sent-received > 1 || sent < 40 {
		t.Errorf("packets lost while the agent restarted: %d sent, %d received, %d unanswered", sent, received, unanswered)
	}
	if p6 != nil {
		sent, received, unanswered, err := p6.stop()
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("IPv6: %d sent, %d received, %d reported unanswered", sent, received, unanswered)
		if unanswered != 0 || sent-received > 1 || sent < 40 {
			t.Errorf("IPv6 packets lost while the agent restarted: %d sent, %d received, %d unanswered", sent, received, unanswered)
		}
	}

	envAfter, err := os.ReadFile(n.SubnetFile)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(envBefore, envAfter) {
		t.Errorf("subnet.env changed across restarts:\n%s\nnow:\n%s", envBefore, envAfter)
	}
	if a, ok, err := e.getLease(ctx, key); err != nil || !ok || a.PublicIP != n.PublicIP {
		t.Errorf("lease %s after restarts: %+v, %v, %v", key, a, ok, err)
	}
}

// The agent puts back what is deleted behind its back — the VXLAN device,
// a route, a neighbour, an FDB entry, the device set down — as soon as
// the kernel says so, well within one resync period.
func testHeal(t *testing.T, ctx context.Context, e *env) { healFamily(t, ctx, e, false) }

// healFamily is testHeal on flannel.1 or, with v6, on flannel-v6.1: the
// same faults, the same bound, the same log line.
func healFamily(t *testing.T, ctx context.Context, e *env, v6 bool) {
	const i = 1
	n := e.l.Node(i)
	peers := e.others(i)
	sn, pub, mac := peers[0].half(v6)
	dev, ip := vxlanDevice, []string{"ip"}
	if v6 {
		dev, ip = vxlanDevice6, []string{"ip", "-6"}
	}
	// change is what the repair's log line must say set it off: this fault,
	// on the device as it is now, not a change left over from the last one.
	faults := []struct {
		name   string
		cmd    []string
		change func(idx int) string
	}{
		{dev + " deleted", []string{"ip", "link", "del", dev},
			func(idx int) string { return fmt.Sprintf("#%d", idx) }},
		{"route to " + sn.String() + " deleted", append(ip, "route", "del", sn.String()),
			func(idx int) string { return fmt.Sprintf("route %s on #%d deleted", sn, idx) }},
		{"neighbour " + sn.Addr().String() + " deleted", append(ip, "neigh", "del", sn.Addr().String(), "dev", dev),
			func(idx int) string { return fmt.Sprintf("neighbour or FDB entry on #%d deleted", idx) }},
		{"FDB entry " + mac.String() + " deleted", []string{"bridge", "fdb", "del", mac.String(), "dev", dev, "dst", pub.String()},
			func(idx int) string { return fmt.Sprintf("neighbour or FDB entry on #%d deleted", idx) }},
		{dev + " set down", []string{"ip", "link", "set", dev, "down"},
			func(idx int) string { return fmt.Sprintf("#%d", idx) }},
	}
	for _, f := range faults {
		e.repairsSettled(ctx, i)
		l, err := e.h[i].LinkByName(dev)
		if err != nil {
			t.Fatal(err)
		}
		mark := e.mark(i)
		if _, err := e.l.Exec(ctx, n.NS, f.cmd...); err != nil {
			t.Fatalf("%s: %v", f.name, err)
		}
		// Event-driven: back well before the next periodic resync could
		// have done it (the lab's is 3 s).
		took, err := waitFor(ctx, eventRepair, func() error { return e.fabricErr(i, peers) })
		if err != nil {
			t.Fatalf("%s: not repaired within %s: %v", f.name, eventRepair, err)
		}
		line := e.waitLog(ctx, mark, 2*time.Second, `msg="repairing: the kernel lost part of the datapath"`, f.change(l.Attrs().Index))
		t.Logf("%s: repaired in %s: %s", f.name, took.Round(time.Millisecond), line)
		if f.name == dev+" deleted" {
			// The recreated device has the MAC the others know it by.
			if _, _, got := e.peer(i).half(v6); got != peerMAC(t, e, i, v6) {
				t.Errorf("recreated %s has MAC %s, the lease says otherwise", dev, got)
			}
		}
		e.mesh(ctx)
	}
}

// peerMAC is node i's VtepMAC as its lease publishes it: BackendData's, or
// with v6 BackendV6Data's.
func peerMAC(t *testing.T, e *env, i int, v6 bool) netlinkx.MAC {
	t.Helper()
	a, ok, err := e.getLease(context.Background(), e.leaseKey(i))
	if err != nil || !ok {
		t.Fatalf("lease of node %d: %v, %v", i, ok, err)
	}
	data := a.BackendData
	if v6 {
		data = a.BackendV6Data
	}
	var d struct{ VtepMAC netlinkx.MAC }
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatalf("lease of node %d: backend data %s: %v", i, data, err)
	}
	return d.VtepMAC
}

// A lease deleted from the store while its agent runs comes straight back
// with the same subnet; deleted while its agent is stopped, the other nodes
// drop its route, neighbour and FDB entry.
func testDeletedLease(t *testing.T, ctx context.Context, e *env) {
	const i = 3
	n := e.l.Node(i)
	key := e.leaseKey(i)
	subnet, subnet6 := e.subnet(i), e.subnet6(i)
	envBefore, err := os.ReadFile(n.SubnetFile)
	if err != nil {
		t.Fatal(err)
	}

	e.del(ctx, key)
	took, err := waitFor(ctx, 10*time.Second, func() error {
		a, ok, err := e.getLease(ctx, key)
		switch {
		case err != nil:
			return err
		case !ok:
			return errors.New("lease not re-acquired")
		case a.PublicIP != n.PublicIP:
			return fmt.Errorf("%s now names %s", key, a.PublicIP)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("running agent's lease deleted: %v", err)
	}
	t.Logf("running agent's lease deleted: back, same subnet %s, in %s", subnet, took.Round(time.Millisecond))
	if after, _ := os.ReadFile(n.SubnetFile); !bytes.Equal(after, envBefore) {
		t.Errorf("subnet.env changed:\n%s\nnow:\n%s", envBefore, after)
	}
	e.converged(ctx, resync+slack)

	gone := e.peer(i)
	for _, o := range []int{1, 2} {
		if e.goneErr(o, gone) == nil {
			t.Fatalf("node %d holds nothing for node %d before its lease is deleted: the check is blind", o, i)
		}
	}
	if err := e.l.StopAgent(ctx, i); err != nil {
		t.Fatal(err)
	}
	e.del(ctx, key)
	for _, o := range []int{1, 2} {
		took, err := waitFor(ctx, resync+slack, func() error { return e.goneErr(o, gone) })
		if err != nil {
			t.Fatalf("stopped agent's lease deleted: %v", err)
		}
		t.Logf("stopped agent's lease deleted: node %d dropped its route, neighbour and FDB entry in %s", o, took.Round(time.Millisecond))
	}

	// Back: the subnet file's hint gets it the same subnet.
	if err := e.l.StartAgent(ctx, i); err != nil {
		t.Fatal(err)
	}
	if err := e.l.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	if got := e.subnet(i); got != subnet {
		t.Errorf("node %d restarted with subnet %s, had %s", i, got, subnet)
	}
	if got := e.subnet6(i); got != subnet6 {
		t.Errorf("node %d restarted with IPv6 subnet %s, had %s", i, got, subnet6)
	}
	if _, ok, err := e.getLease(ctx, key); err != nil || !ok {
		t.Errorf("node %d restarted without its lease %s (%v)", i, key, err)
	}
	e.converged(ctx, resync+slack)
}

// A lease value no agent can parse is logged, naming its key, and
// ignored: no agent stops, the mesh still works.
func testGarbageLease(t *testing.T, ctx context.Context, e *env) {
	bad := map[string]string{
		storePrefix + "/subnets/10.244.250.0-24": `{"PublicIP":`,
		storePrefix + "/subnets/not-a-subnet":    `{"PublicIP":"192.0.2.77","BackendType":"vxlan"}`,
		storePrefix + "/subnets/10.244.251.0-24": `{"PublicIP":"not an address"}`,
	}
	var marks []logMark
	for _, n := range e.l.Nodes {
		marks = append(marks, e.mark(n.Index))
	}
	for k, v := range bad {
		e.put(ctx, k, v)
	}
	defer func() {
		for k := range bad {
			_, _ = e.cli.Delete(context.WithoutCancel(ctx), k)
		}
	}()
	for j, n := range e.l.Nodes {
		for k := range bad {
			line := e.waitLog(ctx, marks[j], 5*time.Second, `msg="ignoring bad lease"`, "key="+k)
			if k == storePrefix+"/subnets/10.244.250.0-24" && j == 0 {
				t.Logf("node %d: %s", n.Index, line)
			}
		}
	}
	for _, n := range e.l.Nodes {
		e.alive(n.Index)
		if code, body, err := e.l.Readyz(ctx, n.Index); err != nil || code != 200 {
			t.Errorf("node %d /readyz after garbage leases: %d %q %v", n.Index, code, body, err)
		}
	}
}

// Leases that parse but would take traffic from pods that own the
// addresses (issue 11), all written at once: not subnet-sized, half of
// node 1's subnet, a catch-all, the underlay outside Network, a copy of
// node 2's subnet under a dual-stack key. Every node refuses each, once,
// with the reason; none is routed; the mesh stays whole; /metrics counts
// them.
func testHostileLeases(t *testing.T, ctx context.Context, e *env) {
	own := e.subnet(1)
	half := netip.PrefixFrom(addOctet3(own.Addr(), 128), own.Bits()+1)
	val := `{"PublicIP":"192.0.2.66","BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:66:00:00:00:%02x"}}`
	bad := map[netip.Prefix]string{
		netip.MustParsePrefix("10.244.249.2/32"): "not /24",
		half:                                     "not /24",
		netip.MustParsePrefix("10.244.0.0/17"):   "not /24",
		netip.MustParsePrefix("192.0.2.0/24"):    "not inside the cluster network",
	}
	keys := map[string]netip.Prefix{}
	i := 0
	for sn := range bad {
		i++
		keys[storePrefix+"/subnets/"+lease.Key(sn, netip.Prefix{})] = sn
	}
	// Node 2's IPv4 subnet again, under a dual-stack key: overlaps an
	// older lease.
	dup := e.subnet(2)
	keys[storePrefix+"/subnets/"+lease.Key(dup, netip.MustParsePrefix("fd00:66::/64"))] = dup
	// Node 2's VtepMAC on a free subnet below every node's (SubnetMin is
	// 10.244.1.0): the lowest subnet used to win the MAC.
	macCopy := netip.MustParsePrefix("10.244.0.0/24")
	macKey := storePrefix + "/subnets/" + lease.Key(macCopy, netip.Prefix{})
	mac2 := peerMAC(t, e, 2, false)

	var marks []logMark
	for _, n := range e.l.Nodes {
		marks = append(marks, e.mark(n.Index))
	}
	i = 0
	for k := range keys {
		i++
		e.put(ctx, k, fmt.Sprintf(val, i))
	}
	e.put(ctx, macKey, strings.Replace(val, "02:66:00:00:00:%02x", mac2.String(), 1))
	keys[macKey] = macCopy
	defer func() {
		for k := range keys {
			_, _ = e.cli.Delete(context.WithoutCancel(ctx), k)
		}
	}()
	for j, n := range e.l.Nodes {
		for k, sn := range keys {
			want := bad[sn]
			switch {
			case sn == macCopy && n.Index != 2:
				want = "VtepMAC " + mac2.String() + " is also lease " + lease.Key(e.subnet(2), netip.Prefix{}) + "'s"
			case sn == macCopy:
				want = "VtepMAC " + mac2.String() + " is this node's own"
			case sn == dup && n.Index != 2:
				want = "subnet " + dup.String() + " is also lease"
			case sn == dup:
				want = "overlaps this node's own"
			}
			line := e.waitLog(ctx, marks[j], 5*time.Second, `msg="lease not programmed"`, "subnet="+sn.String(), want)
			if n.Index == 1 {
				t.Logf("node %d, %s: %s", n.Index, k, line)
			}
		}
	}
	e.converged(ctx, resync+slack)
	// Two resyncs later nothing is routed to them, and nothing repeats.
	time.Sleep(2 * resync)
	for _, n := range e.l.Nodes {
		routes, err := e.h[n.Index].RouteList(netlinkx.RouteFilter{Family: netlinkx.FamilyV4})
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range routes {
			for sn := range bad {
				// The underlay's own prefix route is the kernel's, on eth0.
				if r.Dst == sn && (r.Gw.IsValid() || r.OnLink) {
					t.Errorf("node %d routes hostile lease %s: %s", n.Index, sn, r)
				}
			}
		}
		e.alive(n.Index)
		if code, body, err := e.l.Readyz(ctx, n.Index); err != nil || code != 200 {
			t.Errorf("node %d /readyz with hostile leases: %d %q %v", n.Index, code, body, err)
		}
	}
	for j, n := range e.l.Nodes {
		if got := strings.Count(marks[j].since(), `msg="lease not programmed"`); got != len(keys) {
			t.Errorf("node %d logged %d refusals, want one per lease (%d)", n.Index, got, len(keys))
		}
	}
	_, body, err := e.l.Metrics(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(body, fmt.Sprintf("weft_leases_refused %d\n", len(keys))) {
		t.Errorf("node 1 /metrics does not count %d refused leases:\n%s", len(keys), grepLines(body, "weft_lease"))
	}
}

// addOctet3 is a with n added to its last octet.
func addOctet3(a netip.Addr, n byte) netip.Addr {
	b := a.As4()
	b[3] += n
	return netip.AddrFrom4(b)
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// A fresh agent facing a bad network config says what is wrong, naming
// the key and the value, keeps running and not ready, and goes on once the
// config is corrected.
func testBadConfig(t *testing.T, ctx context.Context, e *env) {
	const i = 3
	subnet := e.subnet(i)
	orig := getConfig(t, ctx, e)
	if err := e.l.StopAgent(ctx, i); err != nil {
		t.Fatal(err)
	}
	defer restoreConfig(t, ctx, e, orig)

	for k, c := range []struct {
		name, conf string
		want       []string
	}{
		{"not JSON", `{"Network": "10.244.0.0/16", "Backend": {"Type": "vxlan"}`,
			[]string{"network config: not valid JSON: line 1 column"}},
		{"Network missing", `{"Backend": {"Type": "vxlan"}}`,
			[]string{"network config: Network: missing; it is required"}},
		{"SubnetLen 31", `{"Network": "10.244.0.0/16", "SubnetLen": 31, "Backend": {"Type": "vxlan"}}`,
			[]string{"network config: SubnetLen 31: must be at most 30"}},
		{"SubnetMin outside", `{"Network": "10.244.0.0/16", "SubnetMin": "10.250.0.0", "Backend": {"Type": "vxlan"}}`,
			[]string{`network config: SubnetMin \"10.250.0.0\": outside Network 10.244.0.0/16`}},
	} {
		m := e.mark(i)
		e.put(ctx, configKey, c.conf)
		if k == 0 {
			if err := e.l.StartAgent(ctx, i); err != nil {
				t.Fatal(err)
			}
		}
		want := append([]string{`level=ERROR msg="network config unusable; waiting for a corrected one"`,
			`source="etcd key ` + configKey + `"`}, c.want...)
		line := e.waitLog(ctx, m, configRetry+slack, want...)
		t.Logf("%s: %s", c.name, line)
		e.alive(i)
		e.notReady(ctx, i, "waiting for a valid network config")
	}

	e.put(ctx, configKey, orig)
	if err := e.l.WaitReady(ctx); err != nil {
		t.Fatalf("agent did not pick up the corrected config: %v", err)
	}
	if got := e.subnet(i); got != subnet {
		t.Errorf("node %d came up with subnet %s, had %s", i, got, subnet)
	}
	e.converged(ctx, resync+slack)
}

// With no subnet left in [SubnetMin, SubnetMax], a node that needs one
// says so, clearly, and keeps running, not ready.
func testPoolExhausted(t *testing.T, ctx context.Context, e *env) {
	const i = 3
	subnet := e.subnet(i)
	orig := getConfig(t, ctx, e)
	if err := e.l.StopAgent(ctx, i); err != nil {
		t.Fatal(err)
	}
	defer restoreConfig(t, ctx, e, orig)
	e.del(ctx, e.leaseKey(i))
	// A pool of one subnet, node 1's.
	only := e.subnet(1).Addr()
	e.put(ctx, configKey, fmt.Sprintf(`{"Network": "10.244.0.0/16", "SubnetMin": %q, "SubnetMax": %q, "Backend": {"Type": "vxlan"}}`, only, only))

	m := e.mark(i)
	if err := e.l.StartAgent(ctx, i); err != nil {
		t.Fatal(err)
	}
	line := e.waitLog(ctx, m, 10*time.Second, `level=ERROR msg="cannot acquire a lease: the subnet pool is exhausted; retrying"`,
		"subnet_min="+only.String(), "subnet_max="+only.String())
	t.Logf("%s", line)
	e.alive(i)
	e.notReady(ctx, i, "subnet pool exhausted")

	// The agent reads the config at start: restart it on the real one.
	if err := e.l.StopAgent(ctx, i); err != nil {
		t.Fatal(err)
	}
	e.put(ctx, configKey, orig)
	if err := e.l.StartAgent(ctx, i); err != nil {
		t.Fatal(err)
	}
	if err := e.l.WaitReady(ctx); err != nil {
		t.Fatal(err)
	}
	if got := e.subnet(i); got != subnet {
		t.Errorf("node %d came back with subnet %s, had %s", i, got, subnet)
	}
	e.converged(ctx, resync+slack)
}

func getConfig(t *testing.T, ctx context.Context, e *env) string {
	t.Helper()
	resp, err := e.cli.Get(ctx, configKey)
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("network config: %v (%d keys)", err, len(resp.Kvs))
	}
	return string(resp.Kvs[0].Value)
}

// restoreConfig puts the original config back after a failed scenario, so
// that the store is left as the lab made it.
func restoreConfig(t *testing.T, ctx context.Context, e *env, orig string) {
	if !t.Failed() {
		return
	}
	_, _ = e.cli.Put(context.WithoutCancel(ctx), configKey, orig)
}
