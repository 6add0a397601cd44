package kubecp_test

import (
	"context"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"

	"github.com/weft-net/weft/internal/kubecp"
	"github.com/weft-net/weft/internal/kubetest"
)

func TestMain(m *testing.M) { os.Exit(kubetest.Main(m)) }

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	t.Cleanup(cancel)
	return c
}

// name is unique to the run: the shared control plane keeps what earlier
// tests made.
func name(prefix string) string { return fmt.Sprintf("%s-%08x", prefix, rand.Uint32()) }

func TestServesItsVersion(t *testing.T) {
	cp := kubetest.Shared(t)
	cs := kubetest.Client(t, cp)
	v, err := cs.Discovery().ServerVersion()
	if err != nil {
		t.Fatal(err)
	}
	want := kubecp.KubeVersion
	if v.GitVersion != want && !strings.HasPrefix(v.GitVersion, want+"-") && !strings.HasPrefix(v.GitVersion, want+"+") {
		t.Errorf("server is %s, client-go wants %s", v.GitVersion, want)
	}
	// RBAC is on: the API lists its roles.
	if _, err := cs.RbacV1().ClusterRoles().Get(ctx(t), "system:node", metav1.GetOptions{}); err != nil {
		t.Errorf("bootstrap ClusterRole system:node: %v", err)
	}
}

// createNode creates a Node without podCIDR, as a kubelet registers
// itself, and deletes it when t ends.
func createNode(t *testing.T, cs kubernetes.Interface, node string) {
	t.Helper()
	_, err := cs.CoreV1().Nodes().Create(ctx(t), &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: node}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := cs.CoreV1().Nodes().Delete(context.Background(), node, metav1.DeleteOptions{}); err != nil {
			t.Errorf("delete node %s: %v", node, err)
		}
	})
}

// waitPodCIDRs waits for node IPAM to give node its podCIDRs and returns
// them.
func waitPodCIDRs(t *testing.T, cs kubernetes.Interface, node string) []netip.Prefix {
	t.Helper()
	t0 := time.Now()
	deadline := time.Now().Add(20 * time.Second)
	for {
		n, err := cs.CoreV1().Nodes().Get(ctx(t), node, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(n.Spec.PodCIDRs) > 0 {
			var out []netip.Prefix
			for _, s := range n.Spec.PodCIDRs {
				p, err := netip.ParsePrefix(s)
				if err != nil {
					t.Fatalf("node %s podCIDR %q: %v", node, s, err)
				}
				out = append(out, p)
			}
			if n.Spec.PodCIDR != n.Spec.PodCIDRs[0] {
				t.Errorf("podCIDR %q is not podCIDRs[0] %q", n.Spec.PodCIDR, n.Spec.PodCIDRs[0])
			}
			return out
		}
		if time.Now().After(deadline) {
			t.Fatalf("node %s has no podCIDR after %v", node, time.Since(t0))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestNodeGetsPodCIDR(t *testing.T) {
	cp := kubetest.Shared(t)
	cs := kubetest.Client(t, cp)
	cluster := netip.MustParsePrefix(kubecp.DefaultClusterCIDR)
	seen := map[netip.Prefix]string{}
	for i := range 3 {
		node := name("cidr" + strconv.Itoa(i))
		t0 := time.Now()
		createNode(t, cs, node)
		got := waitPodCIDRs(t, cs, node)
		took := time.Since(t0)
		t.Logf("node %s: podCIDRs %v after %v", node, got, took.Round(time.Millisecond))
		if len(got) != 1 || got[0].Bits() != 24 || !cluster.Contains(got[0].Addr()) || got[0] != got[0].Masked() {
			t.Fatalf("node %s: podCIDRs %v, want one /24 inside %s", node, got, cluster)
		}
		if other, dup := seen[got[0]]; dup {
			t.Fatalf("nodes %s and %s both got %s", other, node, got[0])
		}
		seen[got[0]] = node
		// As in a real cluster: a kubelet joining sees its podCIDR at once.
		if took > 5*time.Second {
			t.Errorf("node %s waited %v for its podCIDR", node, took)
		}
	}
}

func TestServiceAccountKubeconfigHasItsRBAC(t *testing.T) {
	cp := kubetest.Shared(t)
	cs := kubetest.Client(t, cp)
	c := ctx(t)
	ns, sa, role := name("sa-test"), "agent", name("nodes-get")
	if _, err := cs.CoreV1().Namespaces().Create(c, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		bg := context.Background()
		_ = cs.CoreV1().Namespaces().Delete(bg, ns, metav1.DeleteOptions{})
		_ = cs.RbacV1().ClusterRoleBindings().Delete(bg, role, metav1.DeleteOptions{})
		_ = cs.RbacV1().ClusterRoles().Delete(bg, role, metav1.DeleteOptions{})
	})
	if _, err := cs.CoreV1().ServiceAccounts(ns).Create(c, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.RbacV1().ClusterRoles().Create(c, &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: role},
		Rules:      []rbacv1.PolicyRule{{APIGroups: []string{""}, Resources: []string{"nodes"}, Verbs: []string{"get"}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.RbacV1().ClusterRoleBindings().Create(c, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: role},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: role},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Namespace: ns, Name: sa}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	node := name("rbac")
	createNode(t, cs, node)

	path := filepath.Join(t.TempDir(), "sa.kubeconfig")
	if _, err := cp.ServiceAccountKubeconfig(c, ns, sa, path, time.Minute); err == nil {
		t.Errorf("a ttl under %v was accepted", kubecp.MinTokenTTL)
	}
	exp, err := cp.ServiceAccountKubeconfig(c, ns, sa, path, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if d := time.Until(exp); d < 50*time.Minute || d > 70*time.Minute {
		t.Errorf("token expires in %v, want about 1h", d)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("kubeconfig %s: %v, mode %v; want 0600", path, err, fi.Mode().Perm())
	}
	rc, err := cp.RESTConfig(path)
	if err != nil {
		t.Fatal(err)
	}
	sacs, err := kubernetes.NewForConfig(rc)
	if err != nil {
		t.Fatal(err)
	}

	review, err := sacs.AuthenticationV1().SelfSubjectReviews().Create(c, &authenticationv1.SelfSubjectReview{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if want := "system:serviceaccount:" + ns + ":" + sa; review.Status.UserInfo.Username != want {
		t.Errorf("authenticated as %q, want %q", review.Status.UserInfo.Username, want)
	}
	// The authorizer learns of the new binding from its informer: allow it
	// a moment, as a user of a real cluster would.
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := sacs.CoreV1().Nodes().Get(c, node, metav1.GetOptions{})
		if err == nil {
			break
		}
		if !apierrors.IsForbidden(err) || time.Now().After(deadline) {
			t.Fatalf("get node %s as the service account: %v", node, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	patch := []byte(`{"status":{"conditions":[{"type":"NetworkUnavailable","status":"False","reason":"WeftIsUp"}]}}`)
	_, err = sacs.CoreV1().Nodes().Patch(c, node, types.StrategicMergePatchType, patch, metav1.PatchOptions{}, "status")
	if !apierrors.IsForbidden(err) {
		t.Errorf("patch nodes/status without the right: %v, want Forbidden", err)
	}
	if _, err := sacs.CoreV1().Nodes().List(c, metav1.ListOptions{}); !apierrors.IsForbidden(err) {
		t.Errorf("list nodes without the right: %v, want Forbidden", err)
	}
	// The admin may do what the service account may not.
	if _, err := cs.CoreV1().Nodes().Patch(c, node, types.StrategicMergePatchType, patch, metav1.PatchOptions{}, "status"); err != nil {
		t.Errorf("patch nodes/status as admin: %v", err)
	}
}

// TestOwnDualStackControlPlane starts a control plane of its own with an
// IPv6 cluster CIDR beside the IPv4 one, then stops it and looks for
// anything left running.
func TestOwnDualStackControlPlane(t *testing.T) {
	v4, v6 := netip.MustParsePrefix("10.50.0.0/16"), netip.MustParsePrefix("fd00:50::/56")
	cp := kubetest.Start(t, func(c *kubecp.Config) {
		c.ClusterCIDRs = []netip.Prefix{v4, v6}
		c.NodeCIDRMaskSizeIPv4, c.NodeCIDRMaskSizeIPv6 = 26, 64
		c.EtcdPrefix = "/weft-test-registry"
	})
	cs := kubetest.Client(t, cp)
	// No cleanup: the whole cluster goes.
	if _, err := cs.CoreV1().Nodes().Create(ctx(t), &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "dual"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	got := waitPodCIDRs(t, cs, "dual")
	if len(got) != 2 || got[0].Bits() != 26 || !v4.Contains(got[0].Addr()) || got[1].Bits() != 64 || !v6.Contains(got[1].Addr()) {
		t.Errorf("podCIDRs %v, want a /26 of %s and a /64 of %s", got, v4, v6)
	}

	procs := cp.Processes()
	if len(procs) != 2 {
		t.Fatalf("processes %+v, want kube-apiserver and kube-controller-manager", procs)
	}
	if err := cp.Stop(); err != nil {
		t.Fatal(err)
	}
	for _, p := range procs {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", p.PID)); err == nil {
			t.Errorf("%s (pid %d) still there after Stop", p.Name, p.PID)
		}
	}
	if left := processesMentioning(t, cp.DataDir()); len(left) > 0 {
		t.Errorf("left running after Stop: %v", left)
	}
	if err := cp.Stop(); err != nil {
		t.Errorf("second Stop: %v", err)
	}
}

// TestFailedStartLeavesNothing: an API server whose etcd does not answer
// never gets ready; Start says so, with the server's log, and stops it.
func TestFailedStartLeavesNothing(t *testing.T) {
	bin := kubetest.BinDir(t)
	dir := t.TempDir()
	_, err := kubecp.Start(t.Context(), kubecp.Config{
		BinDir:  bin,
		DataDir: dir,
		// Port 1 on loopback: nothing listens there.
		EtcdServers:  []string{"http://127.0.0.1:1"},
		ReadyTimeout: 5 * time.Second,
	})
	if err == nil {
		t.Fatal("Start succeeded without etcd")
	}
	t.Logf("Start: %v", err)
	if !strings.Contains(err.Error(), "not ready") || !strings.Contains(err.Error(), "kube-apiserver.log") {
		t.Errorf("error does not say what did not get ready and where its log is: %v", err)
	}
	if left := processesMentioning(t, dir); len(left) > 0 {
		t.Errorf("left running after a failed Start: %v", left)
	}
}

// processesMentioning lists the processes whose command line names dir.
func processesMentioning(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err == nil && strings.Contains(string(cmdline), dir) {
			out = append(out, e.Name()+": "+strings.ReplaceAll(string(cmdline), "\x00", " "))
		}
	}
	return out
}
