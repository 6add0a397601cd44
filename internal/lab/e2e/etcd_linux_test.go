package e2e

import (
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/etcdtest"
	"github.com/weft-net/weft/internal/lab"
	"github.com/weft-net/weft/internal/lab/labtest"
	"github.com/weft-net/weft/internal/lease"
	"github.com/weft-net/weft/internal/netlinkx"
)

// TestSecuredEtcdCluster runs a lab on etcd as production runs it: three
// members, TLS for clients and peers, client certificates required and
// etcd's authentication on. The agents work with flanneld's --etcd-* flags;
// wrong credentials are refused at start with a message naming them; one
// member lost is not noticed; two lost, the datapath still forwards; all
// back, the agents use the store again within 2 s.
func TestSecuredEtcdCluster(t *testing.T) {
	labtest.RequireRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	e := upLab(t, ctx, lab.Options{
		Nodes: 3, PodsPerNode: 1, Backend: "vxlan", EtcdMembers: 3, EtcdTLS: true,
		WeftdArgs: []string{"--resync-period=" + resync.String()},
	})
	e.converged(ctx, 10*time.Second)

	runScenarios(t, ctx, e, e, []scenario[*env]{
		{"AgentsUseTLSAndAuth", testAgentsUseTLSAndAuth},
		{"WrongCredentialsRefused", testWrongCredentials},
		{"MemberLost", testMemberLost},
		{"QuorumLostAndBack", testQuorumLost},
	})
}

// Every agent runs with the client certificate, the CA, the user and
// every endpoint, and is ready (the lab came up, so each got a lease).
func testAgentsUseTLSAndAuth(t *testing.T, ctx context.Context, e *env) {
	tls := e.l.EtcdTLS
	for _, n := range e.l.Nodes {
		pid, err := e.l.AgentPID(n.Index)
		if err != nil {
			t.Fatal(err)
		}
		argv, err := cmdline(pid)
		if err != nil {
			t.Fatal(err)
		}
		args := strings.Join(argv, " ")
		for _, want := range []string{"--etcd-certfile=" + tls.ClientCert, "--etcd-keyfile=" + tls.ClientKey,
			"--etcd-cafile=" + tls.CA, "--etcd-username=" + tls.User,
			"--etcd-endpoints=" + strings.Join(e.l.EtcdEndpoints(), ",")} {
			if !strings.Contains(args, want) {
				t.Errorf("node %d's weftd lacks %s: %s", n.Index, want, args)
			}
		}
		if code, body, err := e.l.Readyz(ctx, n.Index); err != nil || code != 200 {
			t.Errorf("node %d /readyz: %d %q %v", n.Index, code, body, err)
		}
	}
	if len(e.l.EtcdEndpoints()) != 3 || !strings.HasPrefix(e.l.EtcdEndpoints()[0], "https://") {
		t.Fatalf("endpoints %v", e.l.EtcdEndpoints())
	}
}

// weftd started with one wrong setting exits at once with a message
// naming the file or the user, before it touches the node.
func testWrongCredentials(t *testing.T, ctx context.Context, e *env) {
	tls := e.l.EtcdTLS
	other := etcdtest.NewPKI(t, t.TempDir())
	n := e.l.Node(1)
	for _, tc := range []struct {
		name, flag, value string
		want              []string
	}{
		{"wrong CA", "--etcd-cafile", other.CA, []string{"not signed by the CA in --etcd-cafile " + other.CA}},
		{"wrong key", "--etcd-keyfile", other.OtherKey, []string{"--etcd-keyfile " + other.OtherKey, "private key does not match public key"}},
		{"certificate of another CA", "--etcd-certfile", other.ClientCert, nil},
		{"wrong password", "--etcd-password", "not-" + tls.Password, []string{`user \"weft\": authentication failed`, "--etcd-password"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append(e.l.EtcdClientArgs(true), "--iface=eth0", "--healthz-port=0",
				"--subnet-file="+filepath.Join(t.TempDir(), "subnet.env"))
			if tc.flag == "--etcd-certfile" {
				// A pair that matches, from a CA etcd does not trust.
				args = append(args, "--etcd-certfile="+other.ClientCert, "--etcd-keyfile="+other.ClientKey)
				tc.want = []string{"refused the client certificate --etcd-certfile " + other.ClientCert}
			} else {
				args = append(args, tc.flag+"="+tc.value)
			}
			rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			defer cancel()
			begin := time.Now()
			cmd := exec.CommandContext(rctx, "ip", append([]string{"netns", "exec", n.NS, filepath.Join(e.l.BinDir, "weftd")}, args...)...)
			out, err := cmd.CombinedOutput()
			took := time.Since(begin)
			if err == nil || rctx.Err() != nil {
				t.Fatalf("weftd with %s: %v after %v, want a failed start; output:\n%s", tc.name, err, took, out)
			}
			for _, w := range tc.want {
				if !strings.Contains(string(out), w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
			if strings.Contains(string(out), "network config") {
				t.Errorf("a credential error reported as a config problem:\n%s", out)
			}
			if took > 15*time.Second {
				t.Errorf("took %v to refuse", took)
			}
			t.Logf("refused in %v: %s", took.Round(time.Millisecond), lastLine(string(out)))
		})
	}
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	return lines[len(lines)-1]
}

// pings runs a ping from each node's pod to the next node's.
type pings []*pinger

func (e *env) ringPings(ctx context.Context) pings {
	var ps pings
	for _, n := range e.l.Nodes {
		next := e.l.Node(n.Index%len(e.l.Nodes) + 1)
		ps = append(ps, e.startPing(ctx, n.Pods[0].NS, next.Pods[0].IP))
	}
	return ps
}

// lossless stops the pings and fails the test on any echo lost.
func (ps pings) lossless(t *testing.T, what string) {
	t.Helper()
	for i, p := range ps {
		sent, received, unanswered, err := p.stop()
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: pod on node %d: %d sent, %d received, %d unanswered", what, i+1, sent, received, unanswered)
		// The echo in flight when ping is interrupted may go uncounted.
		if unanswered != 0 || sent-received > 1 || sent < 20 {
			t.Errorf("%s: node %d's pod lost packets: %d sent, %d received, %d unanswered", what, i+1, sent, received, unanswered)
		}
	}
}

// probeLease is a lease of no node, on a subnet no node holds (10.244.
// <octet>.0/24, or the next free one above it: the nodes' subnets are
// random), and the route every node must program for it. Callers space
// their octets apart.
func (e *env) probeLease(octet byte) (key, value string, route func(dev int) netlinkx.Route) {
	held := func(sn netip.Prefix) bool {
		for _, n := range e.l.Nodes {
			if e.subnet(n.Index) == sn {
				return true
			}
		}
		return false
	}
	sn := netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, octet, 0}), 24)
	for held(sn) {
		octet++
		sn = netip.PrefixFrom(netip.AddrFrom4([4]byte{10, 244, octet, 0}), 24)
	}
	key = storePrefix + "/subnets/" + lease.Key(sn, netip.Prefix{})
	value = fmt.Sprintf(`{"PublicIP":"192.0.2.%d","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"02:77:00:00:00:%02x"}}`, 200+octet%50, octet)
	return key, value, func(dev int) netlinkx.Route {
		return netlinkx.Route{Dst: sn, Gw: sn.Addr(), LinkIndex: dev, OnLink: true}
	}
}

// routedEverywhere waits until every node routes a probe lease, and says
// how long that took.
func (e *env) routedEverywhere(ctx context.Context, route func(dev int) netlinkx.Route, within time.Duration) (time.Duration, error) {
	return waitEvery(ctx, 10*time.Millisecond, within, func() error {
		for _, n := range e.l.Nodes {
			h := e.h[n.Index]
			l, err := h.LinkByName(vxlanDevice)
			if err != nil {
				return err
			}
			r := route(l.Attrs().Index)
			routes, err := h.RouteList(netlinkx.RouteFilter{Family: netlinkx.FamilyV4, LinkIndex: l.Attrs().Index})
			if err != nil {
				return err
			}
			if !contains(routes, r) {
				return fmt.Errorf("node %d has no route %s", n.Index, r)
			}
		}
		return nil
	})
}

func (e *env) allReady(ctx context.Context, what string) {
	e.t.Helper()
	for _, n := range e.l.Nodes {
		e.alive(n.Index)
		if code, body, err := e.l.Readyz(ctx, n.Index); err != nil || code != 200 {
			e.t.Errorf("%s: node %d /readyz: %d %q %v", what, n.Index, code, body, err)
		}
	}
}

// One member killed: pods keep pinging with no loss, agents stay ready,
// and a lease added meanwhile is routed at once.
func testMemberLost(t *testing.T, ctx context.Context, e *env) {
	var marks []logMark
	for _, n := range e.l.Nodes {
		marks = append(marks, e.mark(n.Index))
	}
	ps := e.ringPings(ctx)
	if err := e.l.KillEtcdMember(ctx, 1); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := e.l.StartEtcdMembers(context.WithoutCancel(ctx), 1); err != nil {
			t.Error(err)
		}
	}()
	time.Sleep(2 * resync) // two resyncs with a member gone
	key, val, route := e.probeLease(240)
	e.put(ctx, key, val)
	took, err := e.routedEverywhere(ctx, route, 2*time.Second)
	if err != nil {
		t.Fatalf("a lease added with one member down: %v", err)
	}
	t.Logf("a lease added with one member down was routed on every node in %v", took.Round(time.Millisecond))
	e.del(ctx, key)
	time.Sleep(time.Second)
	e.allReady(ctx, "one member down")
	ps.lossless(t, "one member down")
	for j, m := range marks {
		for _, line := range strings.Split(m.since(), "\n") {
			if strings.Contains(line, "level=WARN") || strings.Contains(line, "level=ERROR") {
				t.Errorf("node %d's agent noticed a member gone: %s", j+1, line)
			}
		}
	}
}

// Two of three members killed: no quorum, yet the datapath forwards with
// no loss. All back: a lease added is routed on every node within 2 s.
func testQuorumLost(t *testing.T, ctx context.Context, e *env) {
	ps := e.ringPings(ctx)
	for _, i := range []int{2, 3} {
		if err := e.l.KillEtcdMember(ctx, i); err != nil {
			t.Fatal(err)
		}
	}
	restarted := false
	defer func() {
		if !restarted {
			_ = e.l.StartEtcdMembers(context.WithoutCancel(ctx), 2, 3)
		}
	}()
	time.Sleep(2*resync + time.Second) // the agents' store calls fail meanwhile
	for _, n := range e.l.Nodes {
		e.alive(n.Index)
	}
	if err := e.l.StartEtcdMembers(ctx, 2, 3); err != nil {
		t.Fatal(err)
	}
	restarted = true
	back := time.Now()
	key, val, route := e.probeLease(245)
	e.put(ctx, key, val)
	took, err := e.routedEverywhere(ctx, route, 2*time.Second)
	if err != nil {
		t.Fatalf("a lease added after the members came back: %v", err)
	}
	t.Logf("all members back: a new lease was routed on every node %v after the put, %v after the cluster served again",
		took.Round(time.Millisecond), time.Since(back).Round(time.Millisecond))
	e.del(ctx, key)
	ps.lossless(t, "quorum lost and back")
	if _, err := waitFor(ctx, 2*resync+slack, func() error {
		for _, n := range e.l.Nodes {
			if code, body, err := e.l.Readyz(ctx, n.Index); err != nil || code != 200 {
				return fmt.Errorf("node %d /readyz: %d %q %v", n.Index, code, body, err)
			}
		}
		return nil
	}); err != nil {
		t.Error(err)
	}
}
