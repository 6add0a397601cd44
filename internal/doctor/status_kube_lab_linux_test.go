package doctor_test

import (
	"context"
	"encoding/json"
	"errors"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/weft-net/weft/internal/lab"
	"github.com/weft-net/weft/internal/lease/kubeannot"
)

// kubeStatusJSON is what `weft status -o json` says in a kube lab.
type kubeStatusJSON struct {
	Store           struct{ Status, Message string }
	OK              bool
	ProgrammedKnown bool
	Nodes           []kubeStatusRow
	Stale           []netip.Prefix
	StaleNodes      map[string]string
	Problems        []string
}

type kubeStatusRow struct {
	Key, Node, BackendType, Data, State string
	Subnet                              netip.Prefix
	PublicIP                            netip.Addr
	Own, Expired, Reservation, TTLKnown bool
}

// runKubeStatus runs `weft status -o json` in lab node i's namespace as a
// user there would: with args (none while the node's weftd runs: status
// reads that weftd's own) and, as the DaemonSet gives weftd, NODE_NAME.
func runKubeStatus(t *testing.T, ctx context.Context, l *lab.Lab, i int, args ...string) (kubeStatusJSON, bool) {
	t.Helper()
	argv := append([]string{"netns", "exec", l.Node(i).NS, filepath.Join(l.BinDir, "weft"), "status", "-o", "json"}, args...)
	cmd := exec.CommandContext(ctx, "ip", argv...)
	cmd.Env = append(os.Environ(), "NODE_NAME="+l.Node(i).Name)
	var s kubeStatusJSON
	ok := runJSON(t, cmd, &s)
	return s, ok
}

// wantKubeStatusMatches fails t unless s has one row per Node of the
// cluster, each with the Node's name, its podCIDR, and the public IP and
// VtepMAC its annotations publish; node self's row is "this node", every
// other "programmed".
func wantKubeStatusMatches(t *testing.T, ctx context.Context, l *lab.Lab, self int, s kubeStatusJSON) {
	t.Helper()
	cs, err := l.KubeClient()
	if err != nil {
		t.Fatal(err)
	}
	keys, err := kubeannot.NewKeys(kubeannot.DefaultPrefix)
	if err != nil {
		t.Fatal(err)
	}
	nodes, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(nodes.Items) != len(l.Nodes) || len(s.Nodes) != len(nodes.Items) {
		t.Fatalf("%d lab nodes, %d Nodes, %d status rows: %+v", len(l.Nodes), len(nodes.Items), len(s.Nodes), s.Nodes)
	}
	if !s.ProgrammedKnown || s.Store.Status != "ok" || !strings.Contains(s.Store.Message, l.APIServer) {
		t.Errorf("status header: programmedKnown %v, store %+v (want ok, naming %s)", s.ProgrammedKnown, s.Store, l.APIServer)
	}
	for _, n := range nodes.Items {
		var row *kubeStatusRow
		for i := range s.Nodes {
			if s.Nodes[i].Node == n.Name {
				row = &s.Nodes[i]
			}
		}
		if row == nil {
			t.Errorf("no status row for Node %s: %+v", n.Name, s.Nodes)
			continue
		}
		var data struct{ VtepMAC string }
		if err := json.Unmarshal([]byte(n.Annotations[keys.BackendData]), &data); err != nil || data.VtepMAC == "" {
			t.Fatalf("Node %s: backend-data %q: %v", n.Name, n.Annotations[keys.BackendData], err)
		}
		want := "programmed"
		if n.Name == l.Node(self).Name {
			want = "this node"
		}
		if row.Subnet.String() != n.Spec.PodCIDR || row.PublicIP.String() != n.Annotations[keys.PublicIP] ||
			row.BackendType != "vxlan" || row.Data != data.VtepMAC || row.State != want || row.Own != (want == "this node") ||
			row.Expired || row.Reservation || row.TTLKnown {
			t.Errorf("Node %s (podCIDR %s, public-ip %s, VtepMAC %s): status row %+v, want state %q",
				n.Name, n.Spec.PodCIDR, n.Annotations[keys.PublicIP], data.VtepMAC, *row, want)
		}
	}
}

// rowOf is s's row for Node name.
func rowOf(t *testing.T, s kubeStatusJSON, name string) kubeStatusRow {
	t.Helper()
	for _, r := range s.Nodes {
		if r.Node == name {
			return r
		}
	}
	t.Fatalf("no status row for Node %s: %+v", name, s.Nodes)
	return kubeStatusRow{}
}

// runLabStatus runs `weft lab status --node i` on lab l and returns what
// it prints and whether it exited 0.
func runLabStatus(t *testing.T, ctx context.Context, l *lab.Lab, i int) (string, bool) {
	t.Helper()
	cmd := exec.CommandContext(ctx, filepath.Join(l.BinDir, "weft"), "lab", "status", "--root", filepath.Dir(l.Dir), "--lab", l.Dir, "--node", strconv.Itoa(i))
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if err != nil && !errors.As(err, &ee) {
		t.Fatalf("%s: %v\n%s", cmd, err, out)
	}
	return string(out), err == nil
}

// wantLabStatusLists fails t unless out, what `weft lab status --node i`
// printed, shows every Node with its podCIDR twice: in the lab's table of
// Node objects, and in weft status's table as node i sees the cluster,
// that row's last column saying state.
func wantLabStatusLists(t *testing.T, ctx context.Context, l *lab.Lab, i int, out string, state func(name string) string) {
	t.Helper()
	cs, err := l.KubeClient()
	if err != nil {
		t.Fatal(err)
	}
	nodes, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	head := "== lab " + l.Name + " as node " + strconv.Itoa(i) + " (" + l.Node(i).NS + ") sees it"
	labs, view, found := strings.Cut(out, head)
	if !found || !strings.Contains(labs, l.Name) {
		t.Fatalf("weft lab status: no line for lab %s or no %q:\n%s", l.Name, head, out)
	}
	for _, n := range nodes.Items {
		idx := 0
		for _, ln := range l.Nodes {
			if ln.Name == n.Name {
				idx = ln.Index
			}
		}
		var inLabs, inView bool
		for _, line := range strings.Split(labs, "\n") {
			f := strings.Fields(line)
			inLabs = inLabs || len(f) >= 3 && f[0] == "n"+strconv.Itoa(idx) && f[1] == n.Name && f[2] == n.Spec.PodCIDR
		}
		for _, line := range strings.Split(view, "\n") {
			f := strings.Fields(line)
			inView = inView || len(f) >= 2 && f[0] == n.Name && f[1] == n.Spec.PodCIDR && strings.HasSuffix(line, "  "+state(n.Name))
		}
		if !inLabs || !inView {
			t.Errorf("weft lab status: Node %s with %s in the Node table %v, in node %d's view (%q) %v:\n%s",
				n.Name, n.Spec.PodCIDR, inLabs, i, state(n.Name), inView, out)
		}
	}
}
