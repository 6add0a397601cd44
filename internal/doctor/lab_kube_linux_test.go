package doctor_test

import (
	"context"
	"encoding/json"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/kubetest"
	"github.com/weft-net/weft/internal/lab"
	"github.com/weft-net/weft/internal/lab/labtest"
	"github.com/weft-net/weft/internal/lease/kubeannot"
)

// TestKubeLab brings up a two-node vxlan lab with --store kube and runs
// weft doctor in node 1 as `weft lab doctor 1` does: every check ok; weft
// status there (and weft lab status) shows one row per Node as the API
// holds it, each programmed, and exits 0. Then faults made on purpose are
// named: the node's public-ip annotation changed; with node 1's agent
// stopped, node 2's route deleted (status: "missing route", exit 1) and
// node 2's annotations removed (status: its subnet routed without a
// lease, named with its Node); nodes/status patch taken from the agents'
// ClusterRole.
func TestKubeLab(t *testing.T) {
	labtest.RequireRoot(t)
	kubeBin := kubetest.BinDir(t)
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()

	l := upLab(t, ctx, "dockube", lab.Options{
		Nodes: 2, PodsPerNode: 1, Backend: config.BackendVXLAN,
		Store: lab.StoreKube, KubeBinDir: kubeBin,
	})
	n1 := l.Node(1)

	// NetworkUnavailable=False is set once the agent is up, which Up
	// waits for; doctor may still run before the patch lands: retry
	// until every check is ok.
	var r jsonReport
	deadline := time.Now().Add(30 * time.Second)
	for {
		var ok bool
		r, ok = runLabDoctor(t, ctx, l.BinDir, l, 1)
		allOK := ok && r.OK
		for _, x := range r.Results {
			allOK = allOK && x.Status == "ok"
		}
		if allOK {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("healthy kube lab: not every check ok:\n%s", r)
		}
		time.Sleep(500 * time.Millisecond)
	}
	for _, c := range []string{"kube-api", "kube-rbac", "kube-node", "pod-cidr", "annotations", "node-network", "leases", "routes", "fdb"} {
		if result(r, c).Check == "" {
			t.Errorf("no %s check in the report:\n%s", c, r)
		}
	}
	if r := result(r, "leases"); !strings.Contains(r.Message, "2 nodes, 2 publish leases") {
		t.Errorf("leases: %s", r.Message)
	}

	// weft status on node 1, as a user there runs it: it reads the
	// running weftd's kube flags. One row per Node, as the API holds it.
	st, ok := runKubeStatus(t, ctx, l, 1)
	if !ok || !st.OK {
		t.Fatalf("healthy kube lab: weft status exit 0 %v, %+v", ok, st)
	}
	wantKubeStatusMatches(t, ctx, l, 1, st)
	n2 := l.Node(2)
	peerState := func(want string) func(string) string {
		return func(name string) string {
			if name == n1.Name {
				return "this node"
			}
			return want
		}
	}
	out, ok := runLabStatus(t, ctx, l, 1)
	if !ok {
		t.Errorf("healthy kube lab: weft lab status exited non-zero:\n%s", out)
	}
	wantLabStatusLists(t, ctx, l, 1, out, peerState("programmed"))
	agent1 := agentArgs(t, l, 1)

	// What weft lab status shows of the Kubernetes side.
	ks, err := l.KubeStatus(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if ks.APIServer != l.APIServer || len(ks.Nodes) != 2 {
		t.Errorf("lab status: %+v", ks)
	}
	for _, n := range ks.Nodes {
		want := l.Node(n.Index)
		if !n.Found || n.Name != want.Name || len(n.PodCIDRs) != 1 || n.PodCIDRs[0] != want.Subnet.Masked().String() ||
			!n.Managed || n.BackendType != "vxlan" || n.PublicIP != want.PublicIP.String() || !strings.HasPrefix(n.NetworkUnavailable, "False") {
			t.Errorf("lab status of node %d: %+v", n.Index, n)
		}
	}

	cs, err := l.KubeClient()
	if err != nil {
		t.Fatal(err)
	}
	// Fault 1: node 1's public-ip annotation names another address. A
	// running agent puts its own back at once; stopped, it cannot, and
	// `weft lab doctor` runs doctor with the agent's flags and NODE_NAME.
	if err := l.StopAgent(ctx, 1); err != nil {
		t.Fatal(err)
	}
	patch := `{"metadata":{"annotations":{"flannel.alpha.coreos.com/public-ip":"192.0.2.99"}}}`
	if _, err := cs.CoreV1().Nodes().Patch(ctx, n1.Name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	r, ok = runLabDoctor(t, ctx, l.BinDir, l, 1)
	if x := result(r, "annotations"); ok || x.Status != "fail" || !strings.Contains(x.Message, `public-ip="192.0.2.99", but this node's PublicIP is `+n1.PublicIP.String()) {
		t.Errorf("changed public-ip: exit ok %v, annotations %s %s\n%s", ok, x.Status, x.Message, r)
	}
	patch = `{"metadata":{"annotations":{"flannel.alpha.coreos.com/public-ip":"` + n1.PublicIP.String() + `"}}}`
	if _, err := cs.CoreV1().Nodes().Patch(ctx, n1.Name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}

	// Agent 1 stopped, status run with its flags: the rows as before; the
	// only problems are the missing agent and its health server.
	st, ok = runKubeStatus(t, ctx, l, 1, agent1...)
	wantKubeStatusMatches(t, ctx, l, 1, st)
	agentDown := len(st.Problems)
	for _, p := range st.Problems {
		if !strings.HasPrefix(p, "agent: no weftd process") && !strings.HasPrefix(p, "healthz: ") && !strings.HasPrefix(p, "readyz: ") {
			agentDown = -1
		}
	}
	if ok || st.OK || agentDown < 1 {
		t.Errorf("agent 1 stopped: weft status exit 0 %v, problems %q; want only the agent's", ok, st.Problems)
	}
	// Node 2's route deleted on node 1: its row says so, status fails.
	n2Subnet := n2.Subnet.Masked().String()
	route, err := l.Exec(ctx, n1.NS, "ip", "route", "show", n2Subnet)
	if err != nil || !strings.Contains(string(route), "dev flannel.1") {
		t.Fatalf("node 1's route to %s: %q %v", n2Subnet, route, err)
	}
	mustExec(t, ctx, l, n1.NS, "ip", "route", "del", n2Subnet, "dev", "flannel.1")
	st, ok = runKubeStatus(t, ctx, l, 1, agent1...)
	row := rowOf(t, st, n2.Name)
	if ok || st.OK || len(st.Problems) <= agentDown || row.State != "missing route" || row.Subnet.String() != n2Subnet ||
		!containsString(st.Problems, n2.Name+" "+row.Key+" ("+n2.PublicIP.String()+"): this node lacks its route") {
		t.Errorf("node 2's route deleted: weft status exit 0 %v, node 2's row %+v, problems %q", ok, row, st.Problems)
	}
	out, ok = runLabStatus(t, ctx, l, 1)
	if ok {
		t.Errorf("node 2's route deleted: weft lab status exited 0:\n%s", out)
	}
	wantLabStatusLists(t, ctx, l, 1, out, peerState("missing route"))
	mustExec(t, ctx, l, n1.NS, append([]string{"ip", "route", "add"}, strings.Fields(string(route))...)...)

	// Node 2's annotations removed (its agent stopped, or it would put
	// them back): its lease is gone while node 1 still routes its subnet.
	if err := l.StopAgent(ctx, 2); err != nil {
		t.Fatal(err)
	}
	keys, err := kubeannot.NewKeys(kubeannot.DefaultPrefix)
	if err != nil {
		t.Fatal(err)
	}
	unset := map[string]any{}
	for _, k := range []string{keys.KubeSubnetManager, keys.BackendType, keys.BackendData, keys.PublicIP} {
		unset[k] = nil
	}
	unpatch, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": unset}})
	if _, err := cs.CoreV1().Nodes().Patch(ctx, n2.Name, types.MergePatchType, unpatch, metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}
	st, ok = runKubeStatus(t, ctx, l, 1, agent1...)
	if ok || st.OK || len(st.Problems) <= agentDown || len(st.Nodes) != 1 || st.Nodes[0].Node != n1.Name || len(st.Stale) != 1 || st.Stale[0].String() != n2Subnet ||
		st.StaleNodes[n2Subnet] != n2.Name || !containsString(st.Problems, n2Subnet+" is routed but no lease holds it: Node "+n2.Name+" has it as podCIDR but publishes no usable lease") {
		t.Errorf("node 2's annotations removed: weft status exit 0 %v, rows %+v, stale %v %v, problems %q", ok, st.Nodes, st.Stale, st.StaleNodes, st.Problems)
	}

	// Fault 2: the ClusterRole without nodes/status patch.
	role, err := cs.RbacV1().ClusterRoles().Get(ctx, "weft", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var rules []rbacv1.PolicyRule
	for _, rule := range role.Rules {
		if !(len(rule.Resources) == 1 && rule.Resources[0] == "nodes/status") {
			rules = append(rules, rule)
		}
	}
	role.Rules = rules
	if _, err := cs.RbacV1().ClusterRoles().Update(ctx, role, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(30 * time.Second)
	for {
		r, ok = runLabDoctor(t, ctx, l.BinDir, l, 1)
		x := result(r, "kube-rbac")
		if x.Status == "fail" {
			if ok || x.Message != "the agent may not nodes/status patch" || !strings.Contains(x.Hint, "ClusterRole weft") {
				t.Errorf("without nodes/status patch: exit ok %v, kube-rbac %s | %s", ok, x.Message, x.Hint)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("kube-rbac still %s after nodes/status patch was removed:\n%s", x.Status, r)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// runLabDoctor runs `weft lab doctor --json <i>` on lab l.
func runLabDoctor(t *testing.T, ctx context.Context, bin string, l *lab.Lab, i int) (jsonReport, bool) {
	t.Helper()
	var r jsonReport
	ok := runJSON(t, exec.CommandContext(ctx, filepath.Join(bin, "weft"), "lab", "doctor", "--root", filepath.Dir(l.Dir), "--lab", l.Dir, "--json", strconv.Itoa(i)), &r)
	return r, ok
}

// result is r's result of check; zero when r has none.
func result(r jsonReport, check string) (x struct {
	Check, Status, Message, Hint string
	Details                      []string
}) {
	for _, y := range r.Results {
		if y.Check == check {
			return y
		}
	}
	return x
}
