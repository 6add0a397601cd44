package doctor_test

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/lab"
	"github.com/weft-net/weft/internal/lab/labtest"
	"github.com/weft-net/weft/internal/lease"
)

// TestLabFaults makes, one at a time on node 1 of a 3-node vxlan lab
// whose agent is stopped (a running agent would repair most of them at
// once), the faults of issue 12 that TestLabProbes does not: the agent
// stopped, the store stopped, subnet.env edited to a wrong subnet, a
// route deleted, an FDB entry pointing at a wrong address, ip_forward
// off, the device's MTU changed. weft doctor names each, with its fix,
// and passes again once it is undone.
func TestLabFaults(t *testing.T) {
	labtest.RequireRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	l := upLab(t, ctx, "docflt", lab.Options{Nodes: 3, PodsPerNode: 1, Backend: config.BackendVXLAN})
	n1, n2 := l.Node(1), l.Node(2)
	args := agentArgs(t, l, 1)
	if err := l.StopAgent(ctx, 1); err != nil {
		t.Fatal(err)
	}
	sh := func(argv ...string) {
		t.Helper()
		mustExec(t, ctx, l, n1.NS, argv...)
	}
	// The agent is stopped: doctor names it, with the fix, and every
	// other check but the agent's health endpoints is ok.
	baseline := func(when string) {
		t.Helper()
		r, ok := runDoctor(t, ctx, l.BinDir, n1.NS, args)
		for _, x := range r.Results {
			if x.Status == "fail" && x.Check != "agent" && x.Check != "healthz" && x.Check != "readyz" && x.Check != "ready-marker" {
				t.Fatalf("%s: %s fails: %s\n%s", when, x.Check, x.Message, r)
			}
		}
		if a := result(r, "agent"); ok || a.Status != "fail" || !strings.Contains(a.Message, "no weftd process in this network namespace") ||
			!strings.Contains(a.Hint, "start weftd") {
			t.Fatalf("%s: doctor exit 0 %v, agent %s: %s | %s; want it to fail naming the stopped agent and how to start it", when, ok, a.Status, a.Message, a.Hint)
		}
	}
	baseline("agent stopped")

	env, err := os.ReadFile(n1.SubnetFile)
	if err != nil {
		t.Fatal(err)
	}
	peer := n2.Subnet.Masked()
	// A wrong subnet no lab node holds, so that no lease names it.
	var wrong netip.Prefix
	for i := 250; i < 256 && !wrong.IsValid(); i++ {
		p := netip.MustParsePrefix(fmt.Sprintf("10.244.%d.0/24", i))
		if !slices.ContainsFunc([]*lab.Node{n1, n2, l.Node(3)}, func(n *lab.Node) bool { return n.Subnet.Overlaps(p) }) {
			wrong = p
		}
	}
	var peerMAC string
	if out, err := l.Exec(ctx, n1.NS, "ip", "neigh", "show", peer.Addr().String(), "dev", "flannel.1"); err == nil {
		if f := strings.Fields(string(out)); len(f) >= 3 {
			peerMAC = f[2]
		}
	}
	if peerMAC == "" {
		t.Fatalf("no neighbour for node 2's VTEP %s on node 1", peer.Addr())
	}
	faults := []struct {
		name        string
		make, undo  func()
		check, want string
		hint        string
	}{
		{"store stopped",
			func() {
				if err := l.KillEtcdMember(ctx, 1); err != nil {
					t.Fatal(err)
				}
			},
			func() {
				if err := l.StartEtcdMembers(ctx, 1); err != nil {
					t.Fatal(err)
				}
			},
			"store", "unreachable", "is the store up?"},
		{"subnet.env edited to a wrong subnet",
			func() {
				edited := strings.ReplaceAll(string(env), n1.Subnet.Addr().String(), lease.FirstIP(wrong).String())
				if err := os.WriteFile(n1.SubnetFile, []byte(edited), 0o644); err != nil {
					t.Fatal(err)
				}
			},
			func() {
				if err := os.WriteFile(n1.SubnetFile, env, 0o644); err != nil {
					t.Fatal(err)
				}
			},
			"subnet-lease", fmt.Sprintf("no lease for %s, the subnet file's; this node (%s) holds %s", wrong, n1.PublicIP, strings.Replace(n1.Subnet.Masked().String(), "/", "-", 1)),
			"the subnet file is stale: restart weftd to rewrite it"},
		{"a route deleted",
			func() { sh("ip", "route", "del", peer.String()) },
			func() {
				sh("ip", "route", "replace", peer.String(), "via", peer.Addr().String(), "dev", "flannel.1", "onlink")
			},
			"routes", "missing: " + peer.String() + " via " + peer.Addr().String() + " dev flannel.1 onlink",
			"weftd repairs routes on every resync"},
		{"FDB entry pointing at a wrong address",
			func() {
				sh("bridge", "fdb", "replace", peerMAC, "dev", "flannel.1", "dst", "192.0.2.99", "self", "permanent")
			},
			func() {
				sh("bridge", "fdb", "replace", peerMAC, "dev", "flannel.1", "dst", n2.PublicIP.String(), "self", "permanent")
			},
			"fdb", "differs (want): " + peerMAC + " dst " + n2.PublicIP.String(), "weftd repairs them on every resync"},
		{"ip_forward off",
			func() { sh("sysctl", "-qw", "net.ipv4.ip_forward=0") },
			func() { sh("sysctl", "-qw", "net.ipv4.ip_forward=1") },
			"ip-forward", "net.ipv4.ip_forward = 0", "sysctl -w net.ipv4.ip_forward=1"},
		{"device MTU changed",
			func() { sh("ip", "link", "set", "flannel.1", "mtu", "1300") },
			func() { sh("ip", "link", "set", "flannel.1", "mtu", "1450") },
			"subnet-mtu", "FLANNEL_MTU 1450 exceeds flannel.1's MTU 1300: pods send packets the overlay drops; the subnet file is right: flannel.1's MTU was changed from the 1450",
			"ip link set flannel.1 mtu 1450"},
	}
	for _, f := range faults {
		if f.want == "" || f.hint == "" {
			t.Fatalf("%s: the fault's cause and fix must both be asserted", f.name)
		}
		f.make()
		r, ok := runDoctor(t, ctx, l.BinDir, n1.NS, args)
		found := false
		for _, x := range r.Results {
			text := strings.Join(append([]string{x.Message}, x.Details...), "\n")
			if x.Check == f.check && x.Status == "fail" && strings.Contains(text, f.want) && strings.Contains(x.Hint, f.hint) {
				found = true
				t.Logf("%s: %s: %s | %s", f.name, x.Check, x.Message, x.Hint)
			}
		}
		if ok || !found {
			t.Errorf("%s: doctor exit 0 %v; want %s to fail naming %q (fix %q):\n%s", f.name, ok, f.check, f.want, f.hint, r)
		}
		f.undo()
		baseline(fmt.Sprintf("after undoing %q", f.name))
	}
}
