package masq

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
)

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: creates network namespaces and firewall rules")
	}
}

// lab is a node namespace with three neighbours:
//
//	pod    10.244.1.2/24 -- node vp 10.244.1.1   (a pod on this node)
//	remote 10.244.2.2/24 -- node vr 10.244.2.1   (a pod of another node)
//	out    192.0.2.2/24  -- node vo 192.0.2.1    (outside the cluster; no
//	                                               route back to pods)
type lab struct {
	t                      *testing.T
	node, pod, remote, out string // namespace names
}

func run(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func newLab(t *testing.T) *lab {
	t.Helper()
	requireRoot(t)
	b := make([]byte, 3)
	rand.Read(b)
	id := hex.EncodeToString(b)
	l := &lab{t: t, node: "wmq-" + id + "-node", pod: "wmq-" + id + "-pod", remote: "wmq-" + id + "-rem", out: "wmq-" + id + "-out"}
	for _, n := range []string{l.node, l.pod, l.remote, l.out} {
		run(t, "ip", "netns", "add", n)
		t.Cleanup(func() { exec.Command("ip", "netns", "del", n).Run() })
		// No duplicate address detection, for the link-local addresses
		// too: while one is tentative, neighbour discovery on its link
		// can stall past the connections' timeout.
		run(t, "ip", "netns", "exec", n, "sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0", "net.ipv6.conf.all.accept_dad=0")
	}
	// Each link has both families: the IPv4 and the IPv6 rules are shown
	// by the same cases.
	link := func(nodeDev, nodeAddr, nodeAddr6, peerNS, peerAddr, peerAddr6, gw, gw6 string) {
		run(t, "ip", "-n", l.node, "link", "add", nodeDev, "type", "veth", "peer", "name", "eth0", "netns", peerNS)
		run(t, "ip", "-n", l.node, "addr", "add", nodeAddr, "dev", nodeDev)
		run(t, "ip", "-n", l.node, "addr", "add", nodeAddr6, "dev", nodeDev, "nodad")
		run(t, "ip", "-n", l.node, "link", "set", nodeDev, "up")
		run(t, "ip", "-n", peerNS, "addr", "add", peerAddr, "dev", "eth0")
		run(t, "ip", "-n", peerNS, "addr", "add", peerAddr6, "dev", "eth0", "nodad")
		run(t, "ip", "-n", peerNS, "link", "set", "eth0", "up")
		run(t, "ip", "-n", peerNS, "link", "set", "lo", "up")
		if gw != "" {
			run(t, "ip", "-n", peerNS, "route", "add", "default", "via", gw)
			run(t, "ip", "-n", peerNS, "-6", "route", "add", "default", "via", gw6)
		}
	}
	link("vp", "10.244.1.1/24", "fd00:10:244:1::1/64", l.pod, "10.244.1.2/24", "fd00:10:244:1::2/64", "10.244.1.1", "fd00:10:244:1::1")
	link("vr", "10.244.2.1/24", "fd00:10:244:2::1/64", l.remote, "10.244.2.2/24", "fd00:10:244:2::2/64", "10.244.2.1", "fd00:10:244:2::1")
	link("vo", "192.0.2.1/24", "2001:db8::1/64", l.out, "192.0.2.2/24", "2001:db8::2/64", "", "")
	run(t, "ip", "netns", "exec", l.node, "sysctl", "-qw", "net.ipv4.ip_forward=1")
	run(t, "ip", "netns", "exec", l.node, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1")
	return l
}

// in runs fn with the calling goroutine's thread inside namespace name, so
// that sockets fn opens and commands it starts live there.
func (l *lab) in(name string, fn func() error) error {
	netns, err := ns.GetNS("/var/run/netns/" + name)
	if err != nil {
		return err
	}
	defer netns.Close()
	return netns.Do(func(ns.NetNS) error { return fn() })
}

// peer connects from namespace from to addr:port, served in namespace to,
// and returns the source address the server saw.
func (l *lab) peer(from, to, addr string) (netip.Addr, error) {
	var ln net.Listener
	if err := l.in(to, func() (err error) { ln, err = net.Listen("tcp", net.JoinHostPort(addr, "0")); return err }); err != nil {
		return netip.Addr{}, err
	}
	defer ln.Close()
	seen := make(chan netip.Addr, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		seen <- c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap()
		io.Copy(io.Discard, c)
	}()
	err := l.in(from, func() error {
		c, err := net.DialTimeout("tcp", ln.Addr().String(), 2*time.Second)
		if err != nil {
			return err
		}
		return c.Close()
	})
	if err != nil {
		return netip.Addr{}, err
	}
	select {
	case a := <-seen:
		return a, nil
	case <-time.After(2 * time.Second):
		return netip.Addr{}, fmt.Errorf("server in %s saw no connection", to)
	}
}

// checkTraffic asserts the masquerade semantics with real connections,
// over IPv4 and (unless ipv4Only) over IPv6.
func (l *lab) checkTraffic() { l.checkFamilies(false) }

func (l *lab) checkFamilies(ipv4Only bool) {
	t := l.t
	t.Helper()
	cases := []struct {
		what, from, to, addr, wantSrc string
	}{
		{"pod -> outside is masqueraded", l.pod, l.out, "192.0.2.2", "192.0.2.1"},
		{"pod -> pod of another node keeps its source", l.pod, l.remote, "10.244.2.2", "10.244.1.2"},
		{"other node's pod -> local pod keeps its source", l.remote, l.pod, "10.244.1.2", "10.244.2.2"},
		{"IPv6 pod -> outside is masqueraded", l.pod, l.out, "2001:db8::2", "2001:db8::1"},
		{"IPv6 pod -> pod of another node keeps its source", l.pod, l.remote, "fd00:10:244:2::2", "fd00:10:244:1::2"},
		{"IPv6 other node's pod -> local pod keeps its source", l.remote, l.pod, "fd00:10:244:1::2", "fd00:10:244:2::2"},
	}
	for _, c := range cases {
		if ipv4Only && strings.HasPrefix(c.what, "IPv6") {
			continue
		}
		got, err := l.peer(c.from, c.to, c.addr)
		if err != nil {
			t.Errorf("%s: %v", c.what, err)
			continue
		}
		if got.String() != c.wantSrc {
			t.Errorf("%s: server saw source %s, want %s", c.what, got, c.wantSrc)
		}
	}
}

var labConfig = Config{
	Network: netip.MustParsePrefix("10.244.0.0/16"), Subnet: netip.MustParsePrefix("10.244.1.0/24"),
	IPv6Network: netip.MustParsePrefix("fd00:10:244::/56"), IPv6Subnet: netip.MustParsePrefix("fd00:10:244:1::/64"),
	Masquerade: true, Forward: true,
}

func ensure(t *testing.T, l *lab, m Manager, c Config, wantChanged bool) {
	t.Helper()
	var changed bool
	err := l.in(l.node, func() (err error) { changed, err = m.Ensure(context.Background(), c); return err })
	if err != nil {
		t.Fatalf("Ensure: %v", err)
	}
	if changed != wantChanged {
		t.Fatalf("Ensure changed = %v, want %v", changed, wantChanged)
	}
}

func TestIPTablesInNamespace(t *testing.T) {
	l := newLab(t)
	// A DROP policy proves that WEFT-FWD is what lets the pod network through.
	run(t, "ip", "netns", "exec", l.node, "iptables", "-P", "FORWARD", "DROP")
	run(t, "ip", "netns", "exec", l.node, "ip6tables", "-P", "FORWARD", "DROP")
	if _, err := l.peer(l.pod, l.remote, "10.244.2.2"); err == nil {
		t.Fatal("forwarding works before any rule; the test cannot show anything")
	}
	if _, err := l.peer(l.pod, l.remote, "fd00:10:244:2::2"); err == nil {
		t.Fatal("IPv6 forwarding works before any rule; the test cannot show anything")
	}

	var m *IPTables
	if err := l.in(l.node, func() (err error) { m, err = NewIPTables(IPTablesVariant{}); return err }); err != nil {
		t.Fatal(err)
	}
	ensure(t, l, m, labConfig, true)
	ensure(t, l, m, labConfig, false)
	l.checkTraffic()

	nat := run(t, "ip", "netns", "exec", l.node, "iptables", "-t", "nat", "-S")
	if !strings.Contains(nat, "-A POSTROUTING -m comment --comment \"weft masq\" -j WEFT-POSTRTG") {
		t.Errorf("no jump to WEFT-POSTRTG:\n%s", nat)
	}
	// ip6tables holds flannel's rules for IPv6 (multicast is ff00::/8).
	nat6 := run(t, "ip", "netns", "exec", l.node, "ip6tables", "-t", "nat", "-S", "WEFT-POSTRTG")
	for _, want := range []string{
		"-A WEFT-POSTRTG -s fd00:10:244:1::/64 -d fd00:10:244::/56 -m comment --comment \"weft masq\" -j RETURN",
		"-A WEFT-POSTRTG -s fd00:10:244::/56 ! -d ff00::/8 -m comment --comment \"weft masq\" -j MASQUERADE",
	} {
		if !strings.Contains(nat6, want) {
			t.Errorf("ip6tables lacks %q:\n%s", want, nat6)
		}
	}
	// What this iptables lists is what we render: a fresh weftd adopts the
	// rules a previous one left without rewriting them.
	fresh := &IPTables{v4: m.v4, v6: m.v6, built: map[string]builtChain{}}
	ensure(t, l, fresh, labConfig, false)

	// Damage: a rule deleted, the jump deleted. Both are repaired.
	run(t, "ip", "netns", "exec", l.node, "iptables", "-t", "nat", "-D", "WEFT-POSTRTG", "5")
	run(t, "ip", "netns", "exec", l.node, "iptables", "-D", "FORWARD", "-m", "comment", "--comment", "weft forward", "-j", "WEFT-FWD")
	run(t, "ip", "netns", "exec", l.node, "ip6tables", "-t", "nat", "-D", "WEFT-POSTRTG", "5")
	run(t, "ip", "netns", "exec", l.node, "ip6tables", "-F", "WEFT-FWD")
	ensure(t, l, m, labConfig, true)
	ensure(t, l, m, labConfig, false)
	l.checkTraffic()

	// --ip-masq-fully-random-disable: the same rules without
	// --random-fully, rewritten by the manager that wrote them with it.
	if nat = run(t, "ip", "netns", "exec", l.node, "iptables", "-t", "nat", "-S", "WEFT-POSTRTG"); !strings.Contains(nat, "--random-fully") {
		t.Errorf("iptables here knows --random-fully, but the rules lack it:\n%s", nat)
	}
	plain := labConfig
	plain.NoFullyRandom = true
	ensure(t, l, m, plain, true)
	ensure(t, l, m, plain, false)
	nat = run(t, "ip", "netns", "exec", l.node, "iptables", "-t", "nat", "-S", "WEFT-POSTRTG")
	if strings.Contains(nat, "random-fully") || strings.Count(nat, "MASQUERADE") != 2 {
		t.Errorf("with NoFullyRandom:\n%s", nat)
	}
	l.checkTraffic()

	// A new subnet (the lease moved) rewrites the chain.
	moved := labConfig
	moved.Subnet = netip.MustParsePrefix("10.244.9.0/24")
	ensure(t, l, m, moved, true)
	if nat = run(t, "ip", "netns", "exec", l.node, "iptables", "-t", "nat", "-S", "WEFT-POSTRTG"); !strings.Contains(nat, "10.244.9.0/24") || strings.Contains(nat, "10.244.1.0/24") {
		t.Errorf("after the subnet moved:\n%s", nat)
	}

	// Turning both off removes the chains.
	ensure(t, l, m, Config{Network: labConfig.Network, Subnet: labConfig.Subnet}, true)
	for _, tool := range []string{"iptables", "ip6tables"} {
		for _, table := range []string{"nat", "filter"} {
			if s := run(t, "ip", "netns", "exec", l.node, tool, "-t", table, "-S"); strings.Contains(s, "WEFT") {
				t.Errorf("%s table %s still has weft rules:\n%s", tool, table, s)
			}
		}
	}
}

func TestNFTablesInNamespace(t *testing.T) {
	l := newLab(t)
	var m *NFTables
	if err := l.in(l.node, func() (err error) { m, err = NewNFTables(); return err }); err != nil {
		t.Fatal(err)
	}
	ensure(t, l, m, labConfig, true)
	ensure(t, l, m, labConfig, false)
	l.checkTraffic()

	// Damage: one rule deleted; the forward chain flushed.
	listing := run(t, "ip", "netns", "exec", l.node, "nft", "-a", "list", "chain", "inet", "weft", "postrouting")
	handle := ""
	for _, line := range strings.Split(listing, "\n") {
		if strings.Contains(line, "to outside masquerade") {
			handle = line[strings.LastIndex(line, " ")+1:]
		}
	}
	if handle == "" {
		t.Fatalf("masquerade rule not listed:\n%s", listing)
	}
	run(t, "ip", "netns", "exec", l.node, "nft", "delete", "rule", "inet", "weft", "postrouting", "handle", handle)
	run(t, "ip", "netns", "exec", l.node, "nft", "flush", "chain", "inet", "weft", "forward")
	ensure(t, l, m, labConfig, true)
	ensure(t, l, m, labConfig, false)
	l.checkTraffic()

	// --ip-masq-fully-random-disable.
	plain := labConfig
	plain.NoFullyRandom = true
	ensure(t, l, m, plain, true)
	ensure(t, l, m, plain, false)
	listing = run(t, "ip", "netns", "exec", l.node, "nft", "list", "chain", "inet", "weft", "postrouting")
	if strings.Contains(listing, "masquerade fully-random") || strings.Count(listing, "(not fully-random)") != 4 {
		t.Errorf("with NoFullyRandom:\n%s", listing)
	}
	l.checkTraffic()

	ensure(t, l, m, Config{Network: labConfig.Network, Subnet: labConfig.Subnet}, true)
	if out, err := exec.Command("ip", "netns", "exec", l.node, "nft", "list", "table", "inet", "weft").CombinedOutput(); err == nil {
		t.Errorf("table inet weft still there:\n%s", out)
	}
	ensure(t, l, m, Config{Network: labConfig.Network, Subnet: labConfig.Subnet}, false)
}

// TestKeeperRepairs runs the Keeper as weftd does and damages the rules
// behind its back.
func TestKeeperRepairs(t *testing.T) {
	l := newLab(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- l.in(l.node, func() error {
			m, err := NewIPTables(IPTablesVariant{})
			if err != nil {
				return err
			}
			k := NewKeeper(m, 50*time.Millisecond, slog.New(slog.NewTextHandler(io.Discard, nil)))
			// IPv4 only: the test is about the Keeper's repair, and each
			// family doubles the iptables runs of every pass (which take
			// long on a loaded machine, all sharing the xtables lock).
			c := labConfig
			c.IPv6Network, c.IPv6Subnet = netip.Prefix{}, netip.Prefix{}
			k.Set(c)
			k.Run(ctx)
			return nil
		})
	}()
	t.Cleanup(func() { cancel(); <-done })

	waitFor := func(what string, ok func() bool) {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			if ok() {
				return
			}
		}
		t.Fatalf("timed out waiting for %s", what)
	}
	hasMasq := func() bool {
		out, _ := exec.Command("ip", "netns", "exec", l.node, "iptables", "-t", "nat", "-S", "WEFT-POSTRTG").CombinedOutput()
		return strings.Contains(string(out), "MASQUERADE")
	}
	waitFor("rules installed", hasMasq)
	run(t, "ip", "netns", "exec", l.node, "iptables", "-t", "nat", "-F", "WEFT-POSTRTG")
	waitFor("rules repaired", hasMasq)
	l.checkFamilies(true)
}

// The rules go to the back end kubelet's chains are in, as flannel's image
// (iptables-wrappers) chooses: a host on iptables-legacy gets them there,
// where they work with kube-proxy's.
func TestIPTablesBackEndFollowsKubelet(t *testing.T) {
	for _, c := range []struct {
		name  string
		hint  []string // creates kubelet's chain, in the node's namespace
		mode  string
		other string // the back end that must stay empty
	}{
		{"none", nil, "", "iptables-legacy"},
		{"legacy", []string{"iptables-legacy", "-t", "mangle", "-N", "KUBE-IPTABLES-HINT"}, "legacy", "iptables-nft"},
		{"legacy IPv6", []string{"ip6tables-legacy", "-t", "mangle", "-N", "KUBE-KUBELET-CANARY"}, "legacy", "iptables-nft"},
		{"nft", []string{"iptables-nft", "-t", "mangle", "-N", "KUBE-KUBELET-CANARY"}, "nft", "iptables-legacy"},
	} {
		t.Run(c.name, func(t *testing.T) {
			l := newLab(t)
			if c.hint != nil {
				run(t, append([]string{"ip", "netns", "exec", l.node}, c.hint...)...)
			}
			var v IPTablesVariant
			var m *IPTables
			if err := l.in(l.node, func() (err error) {
				v = DetectIPTables(context.Background())
				m, err = NewIPTables(v)
				return err
			}); err != nil {
				t.Fatal(err)
			}
			if v.Mode != c.mode {
				t.Fatalf("DetectIPTables = %+v, want mode %q", v, c.mode)
			}
			t.Logf("%s: %s", v, v.Why)
			ensure(t, l, m, labConfig, true)
			l.checkTraffic()
			in := run(t, "ip", "netns", "exec", l.node, v.String(), "-t", "nat", "-S")
			if !strings.Contains(in, "-j WEFT-POSTRTG") {
				t.Errorf("%s lacks the jump to WEFT-POSTRTG:\n%s", v, in)
			}
			if s := run(t, "ip", "netns", "exec", l.node, c.other, "-t", "nat", "-S"); strings.Contains(s, "WEFT") {
				t.Errorf("%s has weft's rules too:\n%s", c.other, s)
			}
		})
	}
}
