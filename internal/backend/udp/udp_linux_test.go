package udp

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime/pprof"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/weft-net/weft/internal/backend"
	"github.com/weft-net/weft/internal/backend/backendtest"
	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/netif"
	"github.com/weft-net/weft/internal/netlinkx"
	"github.com/weft-net/weft/internal/netlinkx/nstest"
	"github.com/weft-net/weft/internal/syncbuf"
)

// The kernel tests run each node's backend in a process of its own, this
// test binary re-executed with `ip netns exec` — as weftd runs — so that
// flannel0 and the socket are made in the node's namespace and each
// node's CPU time can be read from /proc.
const nodeEnv = "WEFT_UDP_TEST_NODE"

func TestMain(m *testing.M) {
	if cfg := os.Getenv(nodeEnv); cfg != "" {
		os.Exit(runNode(cfg))
	}
	os.Exit(m.Run())
}

// nodeConfig is what a node process is started with.
type nodeConfig struct {
	NetConf string
	Ext     netif.External
	Own     lease.Lease
	Leases  []lease.Lease
	Profile string // CPU profile path, if any
}

// runNode runs the backend until stdin closes, answering one command per
// line: "stats" (Stats as JSON), "reconcile" (a full Reconcile).
func runNode(js string) int {
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	fail := func(err error) int {
		log.Error("node failed", "err", err)
		return 1
	}
	var c nodeConfig
	if err := json.Unmarshal([]byte(js), &c); err != nil {
		return fail(err)
	}
	if c.Profile != "" {
		f, err := os.Create(c.Profile)
		if err != nil {
			return fail(err)
		}
		defer f.Close()
		if err := pprof.StartCPUProfile(f); err != nil {
			return fail(err)
		}
		defer pprof.StopCPUProfile()
	}
	nw, _, err := config.Parse([]byte(c.NetConf))
	if err != nil {
		return fail(err)
	}
	h, err := netlinkx.New()
	if err != nil {
		return fail(err)
	}
	defer h.Close()
	b, err := New(backend.Params{Network: nw, Ext: c.Ext}, h, log)
	if err != nil {
		return fail(err)
	}
	ctx := context.Background()
	if typ, data, err := b.LeaseAttrs(ctx); err != nil || typ != "" || data != nil {
		return fail(fmt.Errorf("LeaseAttrs = %q, %s, %v; want nothing", typ, data, err))
	}
	pod, err := b.Configure(ctx, c.Own)
	if err != nil {
		return fail(err)
	}
	if err := b.Reconcile(ctx, c.Own, c.Leases, true); err != nil {
		return fail(err)
	}
	fmt.Printf("ready %d\n", pod.MTU)
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		switch sc.Text() {
		case "stats":
			js, _ := json.Marshal(b.Stats())
			fmt.Printf("%s\n", js)
		case "reconcile":
			if err := b.Reconcile(ctx, c.Own, c.Leases, true); err != nil {
				fmt.Printf("error %v\n", strings.ReplaceAll(err.Error(), "\n", " "))
			} else {
				fmt.Println("ok")
			}
		default:
			fmt.Println("error unknown command")
		}
	}
	if err := b.Close(); err != nil {
		return fail(err)
	}
	return 0
}

// nodeProc is a running node process.
type nodeProc struct {
	cmd    *exec.Cmd
	in     *os.File
	out    *bufio.Reader
	stderr *syncbuf.Buffer
	mtu    int
	ns     string

	stopOnce sync.Once
}

func startNode(t *testing.T, nsName string, c nodeConfig) *nodeProc {
	t.Helper()
	js, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command("ip", "netns", "exec", nsName, exe, "-test.run=^$")
	cmd.Env = append(os.Environ(), nodeEnv+"="+string(js))
	inR, inW, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stdin = inR
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	n := &nodeProc{cmd: cmd, in: inW, out: bufio.NewReader(stdout), stderr: &syncbuf.Buffer{}}
	cmd.Stderr = n.stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	inR.Close()
	n.ns = nsName
	t.Cleanup(func() {
		n.stop(t)
		if t.Failed() {
			t.Logf("node in %s log:\n%s", nsName, n.stderr)
		}
	})
	line := n.readLine(t)
	if _, err := fmt.Sscanf(line, "ready %d", &n.mtu); err != nil {
		t.Fatalf("node in %s: %q: %v\n%s", nsName, line, err, n.stderr)
	}
	return n
}

// stop closes the node's stdin, on which it calls Close and exits.
func (n *nodeProc) stop(t *testing.T) {
	n.stopOnce.Do(func() {
		n.in.Close()
		done := make(chan error, 1)
		go func() { done <- n.cmd.Wait() }()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("node in %s exited: %v\n%s", n.ns, err, n.stderr)
			}
		case <-time.After(10 * time.Second):
			n.cmd.Process.Kill()
			t.Errorf("node in %s did not stop\n%s", n.ns, n.stderr)
		}
	})
}

func (n *nodeProc) readLine(t *testing.T) string {
	t.Helper()
	type res struct {
		s   string
		err error
	}
	ch := make(chan res, 1)
	go func() {
		s, err := n.out.ReadString('\n')
		ch <- res{strings.TrimSpace(s), err}
	}()
	select {
	case r := <-ch:
		if r.err != nil {
			t.Fatalf("node: %v\n%s", r.err, n.stderr)
		}
		return r.s
	case <-time.After(20 * time.Second):
		t.Fatalf("node did not answer\n%s", n.stderr)
		return ""
	}
}

func (n *nodeProc) call(t *testing.T, cmd string) string {
	t.Helper()
	if _, err := fmt.Fprintln(n.in, cmd); err != nil {
		t.Fatal(err)
	}
	return n.readLine(t)
}

func (n *nodeProc) stats(t *testing.T) Stats {
	t.Helper()
	var s Stats
	if err := json.Unmarshal([]byte(n.call(t, "stats")), &s); err != nil {
		t.Fatal(err)
	}
	return s
}

// statsUntil reads the counters until ok holds or a second has passed, and
// returns the last read.
func (n *nodeProc) statsUntil(t *testing.T, ok func(Stats) bool) Stats {
	t.Helper()
	deadline := time.Now().Add(time.Second)
	for {
		s := n.stats(t)
		if ok(s) || time.Now().After(deadline) {
			return s
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// cpu is the process's user+system CPU time so far.
func (n *nodeProc) cpu(t *testing.T) time.Duration {
	t.Helper()
	return procCPU(t, n.cmd.Process.Pid)
}

func procCPU(t *testing.T, pid int) time.Duration {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	// Fields after the command name (which may hold spaces) start at ')'.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+2:]))
	utime, _ := strconv.ParseUint(f[11], 10, 64)
	stime, _ := strconv.ParseUint(f[12], 10, 64)
	return time.Duration(utime+stime) * time.Second / 100 // USER_HZ
}

// udpCluster is two nodes running the udp backend and a third namespace
// on their underlay that runs nothing (a stranger).
type udpCluster struct {
	nodes    []*backendtest.Node
	procs    []*nodeProc
	stranger *backendtest.Node
}

const netConf = `{"Network":"10.244.0.0/16","Backend":{"Type":"udp"}}`

func newUDPCluster(t *testing.T, profileDir string) *udpCluster {
	t.Helper()
	nodes := backendtest.Cluster(t,
		netip.MustParsePrefix("10.244.1.0/24"),
		netip.MustParsePrefix("10.244.2.0/24"),
		netip.MustParsePrefix("10.244.3.0/24"))
	c := &udpCluster{nodes: nodes[:2], stranger: nodes[2]}
	for i := range c.nodes {
		nc := c.config(i)
		if profileDir != "" {
			nc.Profile = fmt.Sprintf("%s/node%d.pprof", profileDir, i+1)
		}
		c.procs = append(c.procs, startNode(t, c.nodes[i].NS.Name, nc))
	}
	return c
}

// config is node i's configuration: its lease and both leases.
func (c *udpCluster) config(i int) nodeConfig {
	leases := []lease.Lease{c.nodes[0].Lease("", nil), c.nodes[1].Lease("", nil)}
	n := c.nodes[i]
	return nodeConfig{NetConf: netConf, Ext: n.Ext, Own: n.Lease("", nil), Leases: leases}
}

func TestTwoNodes(t *testing.T) {
	nstest.RequireRoot(t)
	c := newUDPCluster(t, "")
	n1, n2 := c.nodes[0], c.nodes[1]

	t.Run("device", func(t *testing.T) {
		for i, n := range c.nodes {
			l := n.NS.Link(t, DeviceName)
			if l.Type() != "tuntap" || l.Attrs().MTU != 1472 || l.Attrs().Flags&net.FlagUp == 0 {
				t.Errorf("node %d: flannel0 %s mtu %d flags %v", i+1, l.Type(), l.Attrs().MTU, l.Attrs().Flags)
			}
			if c.procs[i].mtu != 1472 {
				t.Errorf("node %d: Configure returned MTU %d", i+1, c.procs[i].mtu)
			}
			addrs, err := n.NS.H.AddrList(l, netlinkx.FamilyV4)
			if err != nil {
				t.Fatal(err)
			}
			want := netip.PrefixFrom(n.Subnet.Addr(), 32)
			if len(addrs) != 1 || addrs[0] != want {
				t.Errorf("node %d: flannel0 addresses %v, want %v", i+1, addrs, want)
			}
			rs := backendtest.Routes(t, n.NS.H, l.Attrs().Index)
			if len(rs) != 1 || rs[0].Dst != netip.MustParsePrefix("10.244.0.0/16") {
				t.Errorf("node %d: routes on flannel0 %v, want 10.244.0.0/16", i+1, rs)
			}
		}
	})

	t.Run("ping", func(t *testing.T) {
		if err := n1.Pod.Ping(n1.PodIP, n2.PodIP); err != nil {
			t.Fatal(err)
		}
		if err := n2.Pod.Ping(n2.PodIP, n1.PodIP); err != nil {
			t.Fatal(err)
		}
		// The node itself reaches a remote pod from flannel0's address.
		if err := n1.NS.Ping(n1.Subnet.Addr(), n2.PodIP); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("mtu", func(t *testing.T) {
		// The pods' veths have MTU 1500, so the path (flannel0, 1472) is
		// the limit: 1444 bytes of ICMP payload make a 1472-byte packet.
		if out, err := n1.Pod.Exec("ping", "-c", "1", "-W", "2", "-M", "do", "-s", "1444", n2.PodIP.String()); err != nil {
			t.Fatalf("MTU-sized ping failed: %v\n%s", err, out)
		}
		out, err := n1.Pod.Exec("ping", "-c", "1", "-W", "2", "-M", "do", "-s", "1445", n2.PodIP.String())
		if err == nil || !strings.Contains(out, "Frag needed") || !strings.Contains(out, "mtu = 1472") {
			t.Fatalf("1473-byte DF ping: err %v, want fragmentation needed (mtu = 1472):\n%s", err, out)
		}
	})

	t.Run("unknown destination", func(t *testing.T) {
		before := c.procs[0].stats(t)
		out, err := n1.Pod.Exec("ping", "-c", "1", "-W", "2", "10.244.77.7")
		if err == nil || !strings.Contains(out, "From 10.244.77.7 icmp_seq=1 Destination Net Unreachable") {
			t.Fatalf("ping to a subnet no lease holds: err %v, want net unreachable:\n%s", err, out)
		}
		// The loop publishes a batch's counts after it has written the
		// ICMP answer, so ping can return before they move.
		after := c.procs[0].statsUntil(t, func(s Stats) bool {
			return s.NoRoute > before.NoRoute && s.ICMPSent > before.ICMPSent
		})
		if after.NoRoute <= before.NoRoute || after.ICMPSent <= before.ICMPSent {
			t.Fatalf("counters before %+v after %+v", before, after)
		}
	})

	t.Run("ttl", func(t *testing.T) {
		// TTL 2 leaves the pod, is 1 after node 1 forwards it into flannel0:
		// the datapath must not send it on.
		out, err := n1.Pod.Exec("ping", "-c", "1", "-W", "2", "-t", "2", n2.PodIP.String())
		if err == nil || !strings.Contains(out, "Time to live exceeded") {
			t.Fatalf("ping -t 2: err %v, want time exceeded:\n%s", err, out)
		}
		// From the far end of the tunnel (node 2's flannel0 address).
		if !strings.Contains(out, "From "+n2.Subnet.Addr().String()+" ") {
			t.Fatalf("time exceeded from the wrong address:\n%s", out)
		}
	})

	t.Run("strangers", func(t *testing.T) { testStrangers(t, c) })
	t.Run("iperf3", func(t *testing.T) { testIperf(t, c) })
	t.Run("flannel0 deleted", func(t *testing.T) { testRecreate(t, c) })
	t.Run("repair", func(t *testing.T) { testRepair(t, c) })
	t.Run("restart", func(t *testing.T) { testRestart(t, c) })
}

// testRepair changes flannel0 behind the backend's back; a full
// Reconcile puts it right.
func testRepair(t *testing.T, c *udpCluster) {
	n1, n2 := c.nodes[0], c.nodes[1]
	for _, cmd := range [][]string{
		{"route", "del", "10.244.0.0/16", "dev", DeviceName},
		{"addr", "flush", "dev", DeviceName},
		{"addr", "add", "10.244.99.0/32", "dev", DeviceName},
		{"link", "set", DeviceName, "mtu", "1300", "down"},
	} {
		if out, err := n1.NS.Exec("ip", cmd...); err != nil {
			t.Fatal(out)
		}
	}
	if err := n1.Pod.Ping(n1.PodIP, n2.PodIP); err == nil {
		t.Fatal("ping passed with flannel0 broken")
	}
	if r := c.procs[0].call(t, "reconcile"); r != "ok" {
		t.Fatalf("reconcile: %s", r)
	}
	l := n1.NS.Link(t, DeviceName)
	addrs, err := n1.NS.H.AddrList(l, netlinkx.FamilyV4)
	if err != nil {
		t.Fatal(err)
	}
	if l.Attrs().MTU != 1472 || l.Attrs().Flags&net.FlagUp == 0 || len(addrs) != 1 || addrs[0] != netip.PrefixFrom(n1.Subnet.Addr(), 32) {
		t.Fatalf("after repair: mtu %d flags %v addrs %v", l.Attrs().MTU, l.Attrs().Flags, addrs)
	}
	if err := n1.Pod.Ping(n1.PodIP, n2.PodIP); err != nil {
		t.Fatalf("after repair: %v", err)
	}
}

// testRestart stops node 1's backend and starts a new one: flannel0 and
// its route stay meanwhile (traffic is held, not leaked), and the new
// process attaches to the same device.
func testRestart(t *testing.T, c *udpCluster) {
	n1, n2 := c.nodes[0], c.nodes[1]
	before := n1.NS.Link(t, DeviceName).Attrs().Index
	c.procs[0].stop(t)
	l := n1.NS.Link(t, DeviceName)
	if rs := backendtest.Routes(t, n1.NS.H, l.Attrs().Index); len(rs) != 1 {
		t.Fatalf("routes on flannel0 while stopped: %v", rs)
	}
	if err := n1.Pod.Ping(n1.PodIP, n2.PodIP); err == nil {
		t.Fatal("ping passed with no backend running")
	}
	c.procs[0] = startNode(t, n1.NS.Name, c.config(0))
	if after := n1.NS.Link(t, DeviceName).Attrs().Index; after != before {
		t.Errorf("flannel0 was re-created (index %d -> %d), not re-attached", before, after)
	}
	if err := n1.Pod.Ping(n1.PodIP, n2.PodIP); err != nil {
		t.Fatalf("after restart: %v", err)
	}
}

// testStrangers sends datagrams to node 2's port from the stranger
// namespace: one from an address holding no lease, one claiming to be node
// 1 but carrying a source outside node 1's subnet, and, so that the check
// can fail, one claiming to be node 1 that is valid. Only the last may
// reach the pod.
func testStrangers(t *testing.T, c *udpCluster) {
	n1, n2 := c.nodes[0], c.nodes[1]
	var pc *net.UDPConn
	err := n2.Pod.NetNS.Do(func(ns.NetNS) error {
		var err error
		pc, err = net.ListenUDP("udp4", &net.UDPAddr{Port: 9999})
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	received := make(chan string, 10)
	go func() {
		buf := make([]byte, 2000)
		for {
			n, _, err := pc.ReadFromUDP(buf)
			if err != nil {
				close(received)
				return
			}
			received <- string(buf[:n])
		}
	}()

	inner := func(src netip.Addr, msg string) []byte {
		udp := make([]byte, 8+len(msg))
		binary.BigEndian.PutUint16(udp[0:], 4444)
		binary.BigEndian.PutUint16(udp[2:], 9999)
		binary.BigEndian.PutUint16(udp[4:], uint16(len(udp)))
		copy(udp[8:], msg) // UDP checksum 0: none
		return pktSpec{src: src.String(), dst: n2.PodIP.String(), proto: 17, payload: udp}.build()
	}
	before := c.procs[1].stats(t)
	stranger := c.stranger.Ext.Addr
	node1 := n1.Ext.PublicIP
	sendRaw(t, c.stranger.NS.NetNS, netip.AddrPortFrom(stranger, 8285), netip.AddrPortFrom(n2.Ext.PublicIP, 8285), inner(n1.PodIP, "from a stranger"))
	sendRaw(t, c.stranger.NS.NetNS, netip.AddrPortFrom(node1, 8285), netip.AddrPortFrom(n2.Ext.PublicIP, 8285), inner(netip.MustParseAddr("10.244.3.2"), "spoofed source"))
	sendRaw(t, c.stranger.NS.NetNS, netip.AddrPortFrom(node1, 8285), netip.AddrPortFrom(n2.Ext.PublicIP, 8285), inner(n1.PodIP, "valid"))

	select {
	case msg := <-received:
		if msg != "valid" {
			t.Fatalf("pod received %q", msg)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("the valid datagram did not arrive either: the test cannot tell drops from loss")
	}
	select {
	case msg := <-received:
		t.Fatalf("pod received %q", msg)
	case <-time.After(300 * time.Millisecond):
	}
	after := c.procs[1].stats(t)
	if after.UnknownSender != before.UnknownSender+1 || after.Spoofed != before.Spoofed+1 {
		t.Fatalf("drop counters: before %+v after %+v", before, after)
	}
}

// sendRaw sends one UDP datagram with any source address from inside a
// namespace, through a raw socket.
func sendRaw(t *testing.T, netns ns.NetNS, src, dst netip.AddrPort, payload []byte) {
	t.Helper()
	udpLen := 8 + len(payload)
	pkt := make([]byte, 20+udpLen)
	pkt[0] = 0x45
	pkt[offTTL] = 64
	pkt[offProto] = 17
	binary.BigEndian.PutUint16(pkt[offTotalLen:], uint16(len(pkt)))
	s4, d4 := src.Addr().As4(), dst.Addr().As4()
	copy(pkt[offSrc:], s4[:])
	copy(pkt[offDst:], d4[:])
	binary.BigEndian.PutUint16(pkt[20:], src.Port())
	binary.BigEndian.PutUint16(pkt[22:], dst.Port())
	binary.BigEndian.PutUint16(pkt[24:], uint16(udpLen))
	copy(pkt[28:], payload)
	err := netns.Do(func(ns.NetNS) error {
		fd, err := syscall.Socket(syscall.AF_INET, syscall.SOCK_RAW, syscall.IPPROTO_RAW)
		if err != nil {
			return err
		}
		defer syscall.Close(fd)
		return syscall.Sendto(fd, pkt, 0, &syscall.SockaddrInet4{Addr: d4})
	})
	if err != nil {
		t.Fatalf("raw send %s -> %s: %v", src, dst, err)
	}
}

func testRecreate(t *testing.T, c *udpCluster) {
	n1, n2 := c.nodes[0], c.nodes[1]
	if err := n1.NS.H.LinkDel(n1.NS.Link(t, DeviceName)); err != nil {
		t.Fatal(err)
	}
	if err := n1.Pod.Ping(n1.PodIP, n2.PodIP); err == nil {
		t.Fatal("ping passed with flannel0 deleted")
	}
	if r := c.procs[0].call(t, "reconcile"); r != "ok" {
		t.Fatalf("reconcile: %s", r)
	}
	if err := n1.Pod.Ping(n1.PodIP, n2.PodIP); err != nil {
		t.Fatalf("after re-creating flannel0: %v", err)
	}
	if s := c.procs[0].stats(t); s.Restarts != 1 {
		t.Fatalf("Restarts = %d", s.Restarts)
	}
}

// iperf runs one iperf3 client in a namespace against server and returns
// the throughput in bit/s and the bytes moved.
func iperf(t *testing.T, from *nstest.NS, server netip.Addr, seconds int, args ...string) (float64, float64) {
	t.Helper()
	cmd := append([]string{"-c", server.String(), "-t", strconv.Itoa(seconds), "-J"}, args...)
	type result struct {
		Error string `json:"error"`
		End   struct {
			SumReceived struct {
				Bytes         float64 `json:"bytes"`
				BitsPerSecond float64 `json:"bits_per_second"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	var res result
	var out string
	var err error
	for range 20 { // the server may still be starting
		res = result{}
		out, err = from.Exec("iperf3", cmd...)
		if err == nil {
			if err = json.Unmarshal([]byte(out), &res); err == nil && res.Error != "" {
				err = fmt.Errorf("%s", res.Error)
			}
			if err == nil && res.End.SumReceived.Bytes > 0 {
				break
			}
		}
		time.Sleep(200 * time.Millisecond)
	}
	if err != nil || res.End.SumReceived.Bytes == 0 {
		t.Fatalf("iperf3 %s: %v\n%s", strings.Join(cmd, " "), err, out)
	}
	return res.End.SumReceived.BitsPerSecond, res.End.SumReceived.Bytes
}

// iperfServer starts an iperf3 server in a namespace until the test ends.
func iperfServer(t *testing.T, in *nstest.NS) {
	t.Helper()
	cmd := exec.Command("ip", "netns", "exec", in.Name, "iperf3", "-s")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
	})
}

func needIperf(t *testing.T) {
	if _, err := exec.LookPath("iperf3"); err != nil {
		t.Skip("iperf3 not installed")
	}
}

func testIperf(t *testing.T, c *udpCluster) {
	needIperf(t)
	n1, n2 := c.nodes[0], c.nodes[1]
	iperfServer(t, n2.Pod)
	for _, dir := range []struct {
		name string
		args []string
	}{{"pod1->pod2", nil}, {"pod2->pod1", []string{"-R"}}} {
		bps, _ := iperf(t, n1.Pod, n2.PodIP, 2, dir.args...)
		t.Logf("%s TCP: %.2f Gbit/s", dir.name, bps/1e9)
		if bps < 50e6 {
			t.Errorf("%s: %.0f bit/s, the datapath is broken", dir.name, bps)
		}
	}
}

// TestThroughput compares pod-to-pod TCP over the udp backend with the
// bare underlay and kernel VXLAN in the same namespaces. It takes a minute
// and loads both cores, so it runs only with WEFT_UDP_BENCH=1 (seconds per
// run from WEFT_UDP_BENCH_SECONDS, CPU profiles of both nodes written to
// WEFT_UDP_PROFILE_DIR if set).
func TestThroughput(t *testing.T) {
	if os.Getenv("WEFT_UDP_BENCH") != "1" {
		t.Skip("set WEFT_UDP_BENCH=1 to measure throughput")
	}
	nstest.RequireRoot(t)
	needIperf(t)
	secs := 5
	if s, err := strconv.Atoi(os.Getenv("WEFT_UDP_BENCH_SECONDS")); err == nil {
		secs = s
	}
	type result struct {
		name     string
		bps      float64
		cpuPerGB float64 // backend processes, s/GB
		sysPerGB float64 // whole machine, s/GB
	}
	var results []result
	measure := func(name string, from *nstest.NS, to netip.Addr, procs []*nodeProc, args ...string) {
		var cpu0 time.Duration
		for _, p := range procs {
			cpu0 += p.cpu(t)
		}
		sys0 := machineBusy(t)
		bps, bytes := iperf(t, from, to, secs, args...)
		sys := machineBusy(t) - sys0
		var cpu time.Duration
		for _, p := range procs {
			cpu += p.cpu(t)
		}
		cpu -= cpu0
		gb := bytes / 1e9
		r := result{name: name, bps: bps, sysPerGB: sys.Seconds() / gb}
		if len(procs) > 0 {
			r.cpuPerGB = cpu.Seconds() / gb
		}
		results = append(results, r)
		t.Logf("%-28s %6.2f Gbit/s  backend CPU %5.2f s/GB  machine CPU %5.2f s/GB", name, bps/1e9, r.cpuPerGB, r.sysPerGB)
	}

	c := newUDPCluster(t, os.Getenv("WEFT_UDP_PROFILE_DIR"))
	n1, n2 := c.nodes[0], c.nodes[1]
	iperfServer(t, n2.Pod)
	iperfServer(t, n2.NS)
	measure("bare underlay", n1.NS, n2.Ext.Addr, nil)
	measure("bare underlay -P 4", n1.NS, n2.Ext.Addr, nil, "-P", "4")
	measure("udp pod->pod", n1.Pod, n2.PodIP, c.procs)
	measure("udp pod->pod -R", n1.Pod, n2.PodIP, c.procs, "-R")
	measure("udp pod->pod -P 4", n1.Pod, n2.PodIP, c.procs, "-P", "4")
	s1, s2 := c.procs[0].stats(t), c.procs[1].stats(t)
	t.Logf("node1 stats %+v", s1)
	t.Logf("node2 stats %+v", s2)

	// Kernel VXLAN between the same pods, as the vxlan backend sets it up.
	for i, n := range c.nodes {
		if out, err := n.NS.Exec("ip", "link", "del", DeviceName); err != nil {
			t.Fatal(out)
		}
		o := c.nodes[1-i]
		local := n.Ext.Addr.String()
		mac := fmt.Sprintf("02:00:00:00:00:0%d", i+1)
		omac := fmt.Sprintf("02:00:00:00:00:0%d", 2-i)
		for _, cmd := range [][]string{
			{"link", "add", "flannel.1", "address", mac, "type", "vxlan", "id", "1", "local", local, "dev", "eth0", "dstport", "8472", "nolearning"},
			{"link", "set", "flannel.1", "mtu", "1450", "up"},
			{"addr", "add", n.Subnet.Addr().String() + "/32", "dev", "flannel.1"},
			{"neigh", "replace", o.Subnet.Addr().String(), "lladdr", omac, "dev", "flannel.1", "nud", "permanent"},
			{"fdb", "replace", omac, "dev", "flannel.1", "dst", o.Ext.Addr.String(), "self", "permanent"},
			{"route", "replace", o.Subnet.String(), "via", o.Subnet.Addr().String(), "dev", "flannel.1", "onlink"},
		} {
			name := "ip"
			if cmd[0] == "fdb" {
				name = "bridge"
			}
			if out, err := n.NS.Exec(name, cmd...); err != nil {
				t.Fatal(out)
			}
		}
	}
	measure("vxlan pod->pod", n1.Pod, n2.PodIP, nil)
	measure("vxlan pod->pod -R", n1.Pod, n2.PodIP, nil, "-R")
	measure("vxlan pod->pod -P 4", n1.Pod, n2.PodIP, nil, "-P", "4")

	var udp1, vx1 float64
	for _, r := range results {
		switch r.name {
		case "udp pod->pod":
			udp1 = r.bps
		case "vxlan pod->pod":
			vx1 = r.bps
		}
	}
	t.Logf("udp / vxlan single stream: %.2f", udp1/vx1)
}

// machineBusy is the CPU time all cores spent not idle, from /proc/stat.
func machineBusy(t *testing.T) time.Duration {
	t.Helper()
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		t.Fatal(err)
	}
	f := strings.Fields(strings.SplitN(string(b), "\n", 2)[0])[1:]
	var busy uint64
	for i, v := range f {
		n, _ := strconv.ParseUint(v, 10, 64)
		if i != 3 && i != 4 && i < 8 { // not idle, not iowait; guest is counted in user
			busy += n
		}
	}
	return time.Duration(busy) * time.Second / 100
}
