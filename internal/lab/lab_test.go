package lab

import (
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/weft-net/weft/internal/lab/labtest"
	"github.com/weft-net/weft/internal/netlinkx"
)

func TestMain(m *testing.M) { os.Exit(labtest.Main(m)) }

// rootLinks lists the root namespace's link names.
func rootLinks(t *testing.T) map[string]bool {
	t.Helper()
	out, err := exec.Command("ip", "-j", "link", "show").Output()
	if err != nil {
		t.Fatal(err)
	}
	var links []struct {
		Name string `json:"ifname"`
	}
	if err := json.Unmarshal(out, &links); err != nil {
		t.Fatal(err)
	}
	m := map[string]bool{}
	for _, l := range links {
		m[l.Name] = true
	}
	return m
}

func TestLabE2E(t *testing.T) {
	labtest.RequireRoot(t)
	bin, cni := labtest.Binaries(t)
	for _, backend := range []string{"vxlan", "host-gw", "udp"} {
		t.Run(backend, func(t *testing.T) {
			testLab(t, backend, bin, cni)
		})
	}
}

func testLab(t *testing.T, backend, bin, cni string) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	before := rootLinks(t)
	l, err := Up(ctx, Options{
		Root:      t.TempDir(),
		Nodes:     3,
		Backend:   backend,
		BinDir:    bin,
		CNIBinDir: cni,
		Log:       slog.New(slog.NewTextHandler(testWriter{t}, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Down(context.Background(), DownOptions{}); err != nil {
			t.Errorf("down: %v", err)
		}
		if left := l.Leftovers(); len(left) != 0 {
			t.Errorf("namespaces left after down: %v", left)
		}
		if _, err := os.Stat(l.Dir); !os.IsNotExist(err) {
			t.Errorf("lab directory %s left after down: %v", l.Dir, err)
		}
	})
	var desc strings.Builder
	l.Describe(&desc)
	t.Log("\n" + desc.String())

	// Nothing of the lab in the root namespace.
	for name := range rootLinks(t) {
		if !before[name] && (name == "br0" || name == "cni0" || strings.HasPrefix(name, "flannel") || name == "ctl" || nodePort.MatchString(name)) {
			t.Errorf("lab created %s in the root namespace", name)
		}
	}
	subnets := map[string]bool{}
	for _, n := range l.Nodes {
		if !n.Subnet.IsValid() || subnets[n.Subnet.Masked().String()] {
			t.Fatalf("node %d: subnet %v missing or shared", n.Index, n.Subnet)
		}
		subnets[n.Subnet.Masked().String()] = true
		for _, p := range n.Pods {
			if !n.Subnet.Masked().Contains(p.IP) {
				t.Errorf("pod %s: %s is outside its node's subnet %s", p.NS, p.IP, n.Subnet)
			}
		}
	}
	mustMesh(ctx, t, l)
	checkGSO(ctx, t, l)

	// The same lab from a later invocation: state file round trip.
	again, err := Open(filepath.Dir(l.Dir), l.Name, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(again.Pods()) != 6 || again.Pods()[5].IP != l.Pods()[5].IP {
		t.Errorf("reopened lab: %+v", again.Pods())
	}
	if h := again.Health(); !strings.HasPrefix(h, "up: 3/3") {
		t.Errorf("health %q", h)
	}

	if backend == "vxlan" {
		// An agent restart keeps the node's lease and the mesh.
		old := l.Node(2).Subnet
		if err := l.RestartAgent(ctx, 2); err != nil {
			t.Fatal(err)
		}
		if l.Node(2).Subnet != old {
			t.Errorf("node 2 subnet %s after restart, was %s", l.Node(2).Subnet, old)
		}
		mustMesh(ctx, t, l)
	}
}

// A lab whose agents cannot start fails Up, which removes everything it
// made but the logs.
func TestLabUpFailureTearsDown(t *testing.T) {
	labtest.RequireRoot(t)
	bin, cni := labtest.Binaries(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	root := t.TempDir()
	name := NewName()
	l, err := Up(ctx, Options{
		Name: name, Root: root, Nodes: 2, BinDir: bin, CNIBinDir: cni,
		WeftdArgs: []string{"--no-such-flag"},
	})
	if err == nil {
		l.Down(ctx, DownOptions{})
		t.Fatal("Up succeeded with a bad agent flag")
	}
	if !strings.Contains(err.Error(), "weftd exited") || !strings.Contains(err.Error(), "no-such-flag") {
		t.Errorf("error does not say why: %v", err)
	}
	if left := (&Lab{State: State{Name: name}}).Leftovers(); len(left) != 0 {
		t.Errorf("namespaces left: %v", left)
	}
	var files []string
	filepath.WalkDir(filepath.Join(root, name), func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			files = append(files, strings.TrimPrefix(p, filepath.Join(root, name)+"/"))
		}
		return nil
	})
	if got := strings.Join(files, " "); got != "etcd.log n1/weftd.log n2/weftd.log" {
		t.Errorf("files left: %s", got)
	}
	if CurrentName(root) != "" {
		t.Error("current link left pointing at the failed lab")
	}
}

func mustMesh(ctx context.Context, t *testing.T, l *Lab) {
	t.Helper()
	m, err := l.Check(ctx, CheckOptions{NodeToPod: true})
	if err != nil {
		t.Fatal(err)
	}
	if m.Failures() != 0 || m.Tested() != 6*5+3*6 {
		var b strings.Builder
		m.Render(&b)
		t.Fatalf("mesh (%d tested):\n%s", m.Tested(), b.String())
	}
}

var nodePort = regexp.MustCompile(`^n[0-9]+$`)

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// checkGSO checks that the underlay got the lab's BIG TCP size and that
// pods follow it exactly when their packets leave by the underlay as they
// are (host-gw), then streams TCP pod to pod across nodes with those sizes.
func checkGSO(ctx context.Context, t *testing.T, l *Lab) {
	t.Helper()
	if l.UnderlayGSO == 0 {
		t.Log("kernel without IPv4 BIG TCP: GSO sizes not checked")
		return
	}
	podWant := KernelGSO
	if l.Backend == "host-gw" {
		podWant = l.UnderlayGSO
	}
	gso := func(ns, dev string) int {
		h, err := netlinkx.NewAt(nsPath(ns))
		if err != nil {
			t.Fatal(err)
		}
		defer h.Close()
		link, err := h.LinkByName(dev)
		if err != nil {
			t.Fatalf("%s in %s: %v", dev, ns, err)
		}
		return int(link.Attrs().GSOIPv4MaxSize)
	}
	for _, n := range l.Nodes {
		if got := gso(n.NS, "eth0"); got != l.UnderlayGSO {
			t.Errorf("node %d eth0: gso_ipv4_max_size %d, want the underlay's %d", n.Index, got, l.UnderlayGSO)
		}
		if got := gso(n.NS, "cni0"); got != podWant {
			t.Errorf("node %d cni0: gso_ipv4_max_size %d, want %d", n.Index, got, podWant)
		}
		for _, p := range n.Pods {
			if got := gso(p.NS, "eth0"); got != podWant {
				t.Errorf("pod %s eth0: gso_ipv4_max_size %d, want %d", p.NS, got, podWant)
			}
		}
	}
	p1, p2 := l.Nodes[0].Pods[0], l.Nodes[1].Pods[0]
	r, err := Iperf(ctx, p1.NS, p2.NS, p2.IP, time.Second, 1)
	if err != nil || r.Bytes == 0 {
		t.Fatalf("TCP stream %s → %s: %+v, %v", p1.NS, p2.NS, r, err)
	}
	t.Logf("TCP stream %s → %s: %.1f Gbit/s", p1.NS, p2.NS, r.Bps/1e9)
}
