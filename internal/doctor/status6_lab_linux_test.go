package doctor_test

import (
	"context"
	"encoding/json"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/lab"
	"github.com/weft-net/weft/internal/lab/labtest"
)

type probeJSON struct{ Status, Message string }

// status6JSON is what `weft status -o json` says of a dual-stack lease.
type status6JSON struct {
	OK                  bool
	ProgrammedIPv6Known bool
	Nodes               []struct {
		Key, State         string
		Subnet, IPv6Subnet netip.Prefix
		Probe, ProbeIPv6   *probeJSON
	}
	Problems []string
}

// TestLabStatusDualStack: weft status in a dual-stack vxlan lab judges
// the IPv6 datapath too: healthy, every peer is programmed and answers
// --probe over both families; with node 1's agent stopped and its IPv6
// route to node 2 deleted, the row says "missing IPv6 route", the IPv6
// probe names it while the IPv4 one still answers, and status exits 1.
func TestLabStatusDualStack(t *testing.T) {
	labtest.RequireRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	l := upLab(t, ctx, "docst6", lab.Options{
		Nodes: 2, PodsPerNode: 1, Backend: config.BackendVXLAN, IPFamily: lab.IPFamilyDual,
	})
	n1, n2 := l.Node(1), l.Node(2)
	run := func(args ...string) (status6JSON, bool) {
		t.Helper()
		argv := append([]string{"netns", "exec", n1.NS, filepath.Join(l.BinDir, "weft"), "status", "-o", "json", "--probe"}, args...)
		var s status6JSON
		var stderr strings.Builder
		cmd := exec.CommandContext(ctx, "ip", argv...)
		cmd.Stderr = &stderr
		out, err := cmd.Output()
		if jerr := json.Unmarshal(out, &s); jerr != nil {
			t.Fatalf("weft status: %v %v\n%s\n%s", err, jerr, out, stderr.String())
		}
		return s, err == nil
	}
	peer := func(s status6JSON) int {
		for i, n := range s.Nodes {
			if n.Subnet == n2.Subnet.Masked() {
				return i
			}
		}
		t.Fatalf("no row for node 2's %s: %+v", n2.Subnet.Masked(), s.Nodes)
		return -1
	}

	s, ok := run()
	if !ok || !s.OK || !s.ProgrammedIPv6Known {
		t.Fatalf("healthy dual-stack lab: weft status exit 0 %v, %+v", ok, s)
	}
	r := s.Nodes[peer(s)]
	if r.State != "programmed" || r.IPv6Subnet != n2.Subnet6.Masked() || r.Probe == nil || r.Probe.Status != "ok" || r.ProbeIPv6 == nil || r.ProbeIPv6.Status != "ok" {
		t.Errorf("healthy: node 2's row %+v (probes %+v %+v)", r, r.Probe, r.ProbeIPv6)
	}

	args := agentArgs(t, l, 1)
	if err := l.StopAgent(ctx, 1); err != nil {
		t.Fatal(err)
	}
	mustExec(t, ctx, l, n1.NS, "ip", "-6", "route", "del", n2.Subnet6.Masked().String(), "dev", "flannel-v6.1")
	s, ok = run(args...)
	r = s.Nodes[peer(s)]
	if ok || s.OK {
		t.Errorf("IPv6 route deleted: weft status exited 0")
	}
	if r.State != "missing IPv6 route" {
		t.Errorf("IPv6 route deleted: node 2's state %q, want %q", r.State, "missing IPv6 route")
	}
	if r.Probe == nil || r.Probe.Status != "ok" {
		t.Errorf("IPv6 route deleted: the IPv4 probe %+v, want ok", r.Probe)
	}
	if r.ProbeIPv6 == nil || r.ProbeIPv6.Status != "fail" || !strings.Contains(r.ProbeIPv6.Message, "this node lacks its IPv6 route") {
		t.Errorf("IPv6 route deleted: the IPv6 probe %+v, want a failure naming the IPv6 route", r.ProbeIPv6)
	}
	if w := r.Key + " (" + n2.PublicIP.String() + "): this node lacks its IPv6 route"; !containsString(s.Problems, w) {
		t.Errorf("IPv6 route deleted: problems %q, want %q", s.Problems, w)
	}
}

func containsString(ss []string, sub string) bool {
	for _, s := range ss {
		if strings.Contains(s, sub) {
			return true
		}
	}
	return false
}
