package doctor_test

import (
	"context"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/lab"
	"github.com/weft-net/weft/internal/lab/labtest"
)

// TestLabDualStack: in a healthy dual-stack vxlan lab every check is ok,
// the IPv6 ones included; with the agent stopped, an IPv6 route and
// neighbour deleted, the ip6tables masquerade chain flushed and accept_ra
// turned on, doctor names each.
func TestLabDualStack(t *testing.T) {
	labtest.RequireRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	l := upLab(t, ctx, "doc6", lab.Options{
		Nodes: 2, PodsPerNode: 1, Backend: config.BackendVXLAN, IPFamily: lab.IPFamilyDual,
	})
	n1, n2 := l.Node(1), l.Node(2)
	args := agentArgs(t, l, 1)
	r, ok := runDoctor(t, ctx, l.BinDir, n1.NS, []string{"--peers", "none"})
	wantHealthy(t, "healthy dual-stack lab", r, ok)
	for _, c := range []string{"device-v6", "routes-v6", "neighbours-v6", "fdb-v6", "ip6-forward", "masquerade-v6"} {
		if result(r, c).Check == "" {
			t.Errorf("no %s check in a dual-stack lab", c)
		}
	}
	if t.Failed() {
		t.Fatalf("report:\n%s", r)
	}

	if err := l.StopAgent(ctx, 1); err != nil {
		t.Fatal(err)
	}
	remote := n2.Subnet6.Masked()
	mustExec(t, ctx, l, n1.NS, "ip", "-6", "route", "del", remote.String(), "dev", "flannel-v6.1")
	mustExec(t, ctx, l, n1.NS, "ip", "-6", "neigh", "del", remote.Addr().String(), "dev", "flannel-v6.1")
	mustExec(t, ctx, l, n1.NS, "ip6tables", "-t", "nat", "-F", "WEFT-POSTRTG")
	mustExec(t, ctx, l, n1.NS, "sysctl", "-qw", "net.ipv6.conf.flannel-v6/1.accept_ra=1")
	r, ok = runDoctor(t, ctx, l.BinDir, n1.NS, append(args, "--peers", "none"))
	if ok || r.OK {
		t.Fatalf("broken node: doctor exited 0:\n%s", r)
	}
	wantVerdicts(t, "broken node", r, map[string]verdict{
		"routes-v6":     {"fail", "missing: " + remote.String() + " via " + remote.Addr().String() + " dev flannel-v6.1 onlink"},
		"neighbours-v6": {"fail", "missing: " + remote.Addr().String()},
		"masquerade-v6": {"fail", "lacks 6 rules"},
		"device-v6":     {"warn", "accept_ra = 1"},
		"fdb-v6":        {"ok", ""},
		"routes":        {"ok", ""},
		"ip6-forward":   {"ok", ""},
	})
}
