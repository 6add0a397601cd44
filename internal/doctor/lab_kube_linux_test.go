package doctor_test

import (
	"context"
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
)

// TestKubeLab brings up a two-node vxlan lab with --store kube and runs
// weft doctor in node 1 as `weft lab doctor 1` does: every check ok. Then
// two faults made on purpose are named: the node's public-ip annotation
// changed, and nodes/status patch taken from the agents' ClusterRole.
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
	r, ok := runLabDoctor(t, ctx, l.BinDir, l, 1)
	if x := result(r, "annotations"); ok || x.Status != "fail" || !strings.Contains(x.Message, `public-ip="192.0.2.99", but this node's PublicIP is `+n1.PublicIP.String()) {
		t.Errorf("changed public-ip: exit ok %v, annotations %s %s\n%s", ok, x.Status, x.Message, r)
	}
	patch = `{"metadata":{"annotations":{"flannel.alpha.coreos.com/public-ip":"` + n1.PublicIP.String() + `"}}}`
	if _, err := cs.CoreV1().Nodes().Patch(ctx, n1.Name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
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
