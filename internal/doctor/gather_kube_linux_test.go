package doctor

import (
	"context"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	kubemanifest "github.com/weft-net/weft/deploy/kube"
	"github.com/weft-net/weft/internal/agentopts"
	"github.com/weft-net/weft/internal/kubecp"
	"github.com/weft-net/weft/internal/kubetest"
)

// applyManifestRBAC creates weft.yml's Namespace, ServiceAccount,
// ClusterRole and ClusterRoleBinding, and returns the ClusterRole.
func applyManifestRBAC(t *testing.T, ctx context.Context, cs kubernetes.Interface) *rbacv1.ClusterRole {
	t.Helper()
	if err := kubemanifest.ApplyAgentRBAC(ctx, cs); err != nil {
		t.Fatal(err)
	}
	var name string
	objs, err := kubemanifest.Objects()
	if err != nil {
		t.Fatal(err)
	}
	for _, obj := range objs {
		if r, ok := obj.(*rbacv1.ClusterRole); ok {
			name = r.Name
		}
	}
	role, err := cs.RbacV1().ClusterRoles().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("weft.yml's ClusterRole %q: %v", name, err)
	}
	return role
}

// kubeOnly evaluates the Kubernetes facts alone and returns the results
// of the Kubernetes checks by name.
func kubeOnly(k *KubeFacts, o agentopts.Options) map[string]Result {
	out := map[string]Result{}
	for _, r := range Evaluate(Facts{Now: time.Now(), Options: o, Kube: k}).Results {
		switch r.Check {
		case "kube-api", "kube-rbac", "config", "kube-node", "pod-cidr", "leases", "annotations", "node-network":
			out[r.Check] = r
		}
	}
	return out
}

// TestGatherKube gathers from a real kube-apiserver and controller-manager
// with the manifest's ServiceAccount: through a kubeconfig and, as for a
// weftd in a pod, through its service account files under /proc/<pid>/root;
// then, with nodes/status patch taken from the ClusterRole, the RBAC check
// names what is missing.
func TestGatherKube(t *testing.T) {
	cp := kubetest.Start(t)
	cs := kubetest.Client(t, cp)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	role := applyManifestRBAC(t, ctx, cs)

	// This node and a peer, both with podCIDRs from the controller-manager;
	// the peer publishes a lease as flannel does, this one nothing yet, and
	// a third has no agent.
	for _, name := range []string{"doc-self", "doc-peer", "doc-bare"} {
		if _, err := cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	for {
		peer, err := cs.CoreV1().Nodes().Get(ctx, "doc-peer", metav1.GetOptions{})
		self, err2 := cs.CoreV1().Nodes().Get(ctx, "doc-self", metav1.GetOptions{})
		if err == nil && err2 == nil && peer.Spec.PodCIDR != "" && self.Spec.PodCIDR != "" {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("no podCIDRs assigned: %v", ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
	}
	patch := `{"metadata":{"annotations":{"flannel.alpha.coreos.com/kube-subnet-manager":"true","flannel.alpha.coreos.com/backend-type":"vxlan",` +
		`"flannel.alpha.coreos.com/backend-data":"{\"VNI\":1,\"VtepMAC\":\"aa:00:00:00:00:02\"}","flannel.alpha.coreos.com/public-ip":"192.0.2.2"}}}`
	if _, err := cs.CoreV1().Nodes().Patch(ctx, "doc-peer", types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
		t.Fatal(err)
	}

	dir := t.TempDir()
	netConf := filepath.Join(dir, "net-conf.json")
	if err := os.WriteFile(netConf, []byte(`{"Network":"`+kubecp.DefaultClusterCIDR+`","Backend":{"Type":"vxlan"}}`), 0o644); err != nil {
		t.Fatal(err)
	}
	kubeconfig := filepath.Join(dir, "kubeconfig")
	if _, err := cp.ServiceAccountKubeconfig(ctx, kubemanifest.Namespace, kubemanifest.ServiceAccount, kubeconfig, time.Hour); err != nil {
		t.Fatal(err)
	}
	o := agentopts.Defaults()
	o.KubeSubnetMgr, o.KubeconfigFile, o.NetConfigPath = true, kubeconfig, netConf
	nodeName := func(n string) string {
		if n == "NODE_NAME" {
			return "doc-self"
		}
		return ""
	}

	k := gatherKube(ctx, o, kubeSource{getenv: nodeName}, 10*time.Second)
	if k.Err != nil || k.VersionErr != nil {
		t.Fatalf("gather: client %v, version %v", k.Err, k.VersionErr)
	}
	if k.NodeName != "doc-self" || k.NodeNameFrom != "doctor's NODE_NAME" || k.Node == nil || k.Node.Spec.PodCIDR == "" {
		t.Fatalf("own node: %q from %q, %+v (err %v)", k.NodeName, k.NodeNameFrom, k.Node, k.NodeErr)
	}
	if len(k.Nodes) != 3 || k.NodesErr != nil {
		t.Errorf("nodes: %d, %v; want 3", len(k.Nodes), k.NodesErr)
	}
	for _, a := range k.Access {
		if !a.Allowed || a.Err != nil {
			t.Errorf("%s: allowed %v (%s), err %v", a.Permission(), a.Allowed, a.Reason, a.Err)
		}
	}
	rs := kubeOnly(k, o)
	for _, c := range []string{"kube-api", "kube-rbac", "config", "kube-node", "pod-cidr", "node-network"} {
		if c == "node-network" {
			// Nothing has set it yet: weftd would.
			if rs[c].Status != Warn {
				t.Errorf("%s: %s %s, want warn", c, rs[c].Status, rs[c].Message)
			}
			continue
		}
		if rs[c].Status != OK {
			t.Errorf("%s: %s %s (%s)", c, rs[c].Status, rs[c].Message, rs[c].Hint)
		}
	}
	if r := rs["leases"]; r.Status != OK || !strings.Contains(r.Message, "3 nodes, 1 publish leases (kube-subnet-manager=true), 2 without a weft or flannel agent") {
		t.Errorf("leases: %s %s", r.Status, r.Message)
	}
	if r := rs["annotations"]; r.Status != Fail || !strings.Contains(r.Message, `kube-subnet-manager="", not "true"`) {
		t.Errorf("annotations of an unpublished node: %s %s", r.Status, r.Message)
	}

	// As for a weftd in a pod: no kubeconfig, the service account's token
	// and CA in its root, the API server in its environment.
	tok, err := cs.CoreV1().ServiceAccounts(kubemanifest.Namespace).CreateToken(ctx, kubemanifest.ServiceAccount,
		&authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	proc := t.TempDir()
	secrets := filepath.Join(proc, "4242", "root", filepath.Dir(saTokenFile))
	if err := os.MkdirAll(secrets, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(secrets, "token"), []byte(tok.Status.Token), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(secrets, "ca.crt"), cp.CACert(), 0o644); err != nil {
		t.Fatal(err)
	}
	u, err := url.Parse(cp.URL())
	if err != nil {
		t.Fatal(err)
	}
	agent := &Process{PID: 4242, SameNetNS: true, KubeEnv: []string{
		"NODE_NAME=doc-self", "KUBERNETES_SERVICE_HOST=" + u.Hostname(), "KUBERNETES_SERVICE_PORT=" + u.Port(),
	}}
	inPod := o
	inPod.KubeconfigFile = ""
	k = gatherKube(ctx, inPod, kubeSource{agent: agent, procRoot: proc, getenv: func(string) string { return "" }}, 10*time.Second)
	rs = kubeOnly(k, inPod)
	if r := rs["kube-api"]; r.Status != OK || !strings.Contains(r.Message, "credentials from weftd pid 4242's service account") {
		t.Errorf("in-pod credentials: %s %s (%s)", r.Status, r.Message, r.Hint)
	}
	if r := rs["kube-node"]; r.Status != OK || !strings.Contains(r.Message, "from weftd pid 4242's NODE_NAME") {
		t.Errorf("in-pod node: %s %s", r.Status, r.Message)
	}

	// The ClusterRole without nodes/status patch.
	var rules []rbacv1.PolicyRule
	for _, r := range role.Rules {
		if len(r.Resources) == 1 && r.Resources[0] == "nodes/status" {
			continue
		}
		rules = append(rules, r)
	}
	if len(rules) == len(role.Rules) {
		t.Fatalf("the manifest's ClusterRole has no nodes/status rule: %+v", role.Rules)
	}
	role.Rules = rules
	if _, err := cs.RbacV1().ClusterRoles().Update(ctx, role, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	// RBAC changes reach the authorizer through its informer: retry.
	for {
		k = gatherKube(ctx, o, kubeSource{getenv: nodeName}, 10*time.Second)
		r := kubeOnly(k, o)["kube-rbac"]
		if r.Status == Fail {
			if r.Message != "the agent may not nodes/status patch" {
				t.Errorf("kube-rbac: %s", r.Message)
			}
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("kube-rbac still %s %s after the rule was removed", r.Status, r.Message)
		case <-time.After(100 * time.Millisecond):
		}
	}
}
