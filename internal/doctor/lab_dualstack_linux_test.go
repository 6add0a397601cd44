package doctor_test

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/doctor"
	"github.com/weft-net/weft/internal/lab"
	"github.com/weft-net/weft/internal/lab/labtest"
)

// TestLabDualStack: in a healthy dual-stack vxlan lab every check is ok,
// the IPv6 ones included; with the agent stopped, an IPv6 route and
// neighbour deleted, the ip6tables masquerade chain flushed and accept_ra
// turned on, doctor names each.
func TestLabDualStack(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: builds a lab in network namespaces")
	}
	bin, cni := labtest.Binaries(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var suffix [3]byte
	_, _ = rand.Read(suffix[:])
	l, err := lab.Up(ctx, lab.Options{
		Name: "doc6-" + hex.EncodeToString(suffix[:]), Root: t.TempDir(),
		Nodes: 2, PodsPerNode: 1, Backend: config.BackendVXLAN, IPFamily: lab.IPFamilyDual,
		BinDir: bin, CNIBinDir: cni,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		dctx, dcancel := context.WithTimeout(context.Background(), time.Minute)
		defer dcancel()
		if err := l.Down(dctx, lab.DownOptions{}); err != nil {
			t.Errorf("lab down: %v", err)
		}
	})
	n1, n2 := l.Node(1), l.Node(2)
	pid, err := l.AgentPID(1)
	if err != nil {
		t.Fatal(err)
	}
	args, err := doctor.AgentArgs(pid)
	if err != nil {
		t.Fatal(err)
	}
	r, ok := runDoctor(t, ctx, bin, n1.NS, []string{"--peers", "none"})
	if !ok || !r.OK {
		t.Fatalf("healthy dual-stack lab: doctor failed:\n%s", r)
	}
	seen := map[string]bool{}
	for _, x := range r.Results {
		seen[x.Check] = true
		if x.Status != "ok" {
			t.Errorf("healthy lab: %s is %s: %s", x.Check, x.Status, x.Message)
		}
	}
	for _, c := range []string{"device-v6", "routes-v6", "neighbours-v6", "fdb-v6", "ip6-forward", "masquerade-v6"} {
		if !seen[c] {
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
	for _, argv := range [][]string{
		{"ip", "-6", "route", "del", remote.String(), "dev", "flannel-v6.1"},
		{"ip", "-6", "neigh", "del", remote.Addr().String(), "dev", "flannel-v6.1"},
		{"ip6tables", "-t", "nat", "-F", "WEFT-POSTRTG"},
		{"sysctl", "-qw", "net.ipv6.conf.flannel-v6/1.accept_ra=1"},
	} {
		if out, err := l.Exec(ctx, n1.NS, argv...); err != nil {
			t.Fatalf("%v: %v %s", argv, err, out)
		}
	}
	r, ok = runDoctor(t, ctx, bin, n1.NS, append(args, "--peers", "none"))
	if ok || r.OK {
		t.Fatalf("broken node: doctor exited 0:\n%s", r)
	}
	want := map[string]struct{ status, text string }{
		"routes-v6":     {"fail", "missing: " + remote.String() + " via " + remote.Addr().String() + " dev flannel-v6.1 onlink"},
		"neighbours-v6": {"fail", "missing: " + remote.Addr().String()},
		"masquerade-v6": {"fail", "lacks 6 rules"},
		"device-v6":     {"warn", "accept_ra = 1"},
		"fdb-v6":        {"ok", ""},
		"routes":        {"ok", ""},
		"ip6-forward":   {"ok", ""},
	}
	for _, x := range r.Results {
		w, checked := want[x.Check]
		if !checked {
			continue
		}
		text := strings.Join(append([]string{x.Message}, x.Details...), "\n")
		if x.Status != w.status || !strings.Contains(text, w.text) {
			t.Errorf("broken node: %s is %s (%s), want %s with %q", x.Check, x.Status, text, w.status, w.text)
		}
	}
	if t.Failed() {
		t.Logf("report:\n%s", r)
	}
}
