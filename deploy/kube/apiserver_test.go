package kube

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/restmapper"
	"sigs.k8s.io/yaml"

	"github.com/weft-net/weft/internal/kubecp"
	"github.com/weft-net/weft/internal/kubetest"
)

// TestAPIServer puts weft.yml to a real kube-apiserver and
// kube-controller-manager: every object passes a server-side dry run with
// strict field validation, the service account can do what weftd does and
// no more, and with flannel-patch.yaml on a flannel DaemonSet the two
// DaemonSet controllers give every node exactly one agent, by its label.
func TestAPIServer(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: starts a Kubernetes control plane")
	}
	cp := kubetest.Start(t)
	cs := kubetest.Client(t, cp)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	m := loadManifest(t)

	dyn, err := dynamic.NewForConfig(cp.AdminConfig())
	if err != nil {
		t.Fatal(err)
	}
	mapper := restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(cs.Discovery()))
	create := func(doc []byte, dryRun bool) error {
		var obj unstructured.Unstructured
		if err := yaml.Unmarshal(doc, &obj.Object); err != nil {
			return err
		}
		gvk := obj.GroupVersionKind()
		mapping, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if err != nil {
			return err
		}
		opts := metav1.CreateOptions{FieldValidation: "Strict"}
		if dryRun {
			opts.DryRun = []string{metav1.DryRunAll}
		}
		_, err = dyn.Resource(mapping.Resource).Namespace(obj.GetNamespace()).Create(ctx, &obj, opts)
		if err != nil {
			return fmt.Errorf("%s %s: %w", gvk.Kind, obj.GetName(), err)
		}
		return nil
	}

	t.Run("dry run", func(t *testing.T) {
		// The namespace lifecycle admission refuses objects in a namespace
		// that does not exist, dry run or not: the namespace is dry-run,
		// then made, then the rest are dry-run in it.
		for i, doc := range m.docs {
			if err := create(doc, true); err != nil {
				t.Errorf("server-side dry run: %v", err)
			}
			if i == 0 {
				if err := create(doc, false); err != nil {
					t.Fatal(err)
				}
			}
		}
		// A dry run stores nothing.
		if _, err := cs.AppsV1().DaemonSets(m.DaemonSet.Namespace).Get(ctx, m.DaemonSet.Name, metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			t.Errorf("DaemonSet after a dry run: %v, want not found", err)
		}
	})
	if t.Failed() {
		return
	}
	for _, doc := range m.docs[1:] {
		if err := create(doc, false); err != nil {
			t.Fatal(err)
		}
	}

	nodes := map[string]map[string]string{
		"weft-node":    {"kubernetes.io/os": "linux", AgentLabel: AgentWeft},
		"flannel-node": {"kubernetes.io/os": "linux"},
		"windows-node": {"kubernetes.io/os": "windows"},
	}
	for name, l := range nodes {
		_, err := cs.CoreV1().Nodes().Create(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: l}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
	}

	t.Run("rbac", func(t *testing.T) {
		kc := filepath.Join(t.TempDir(), "weft.kubeconfig")
		if _, err := cp.ServiceAccountKubeconfig(ctx, m.Account.Namespace, m.Account.Name, kc, kubecp.MinTokenTTL); err != nil {
			t.Fatal(err)
		}
		rc, err := cp.RESTConfig(kc)
		if err != nil {
			t.Fatal(err)
		}
		sa, err := kubernetes.NewForConfig(rc)
		if err != nil {
			t.Fatal(err)
		}
		nodes, pods := sa.CoreV1().Nodes(), sa.CoreV1().Pods(m.Account.Namespace)
		annotate := []byte(`{"metadata":{"annotations":{"flannel.alpha.coreos.com/kube-subnet-manager":"true"}}}`)
		allowed := map[string]error{}
		_, allowed["nodes get"] = nodes.Get(ctx, "weft-node", metav1.GetOptions{})
		_, allowed["nodes list"] = nodes.List(ctx, metav1.ListOptions{})
		w, err := nodes.Watch(ctx, metav1.ListOptions{})
		if err == nil {
			w.Stop()
		}
		allowed["nodes watch"] = err
		_, allowed["nodes/status patch"] = nodes.Patch(ctx, "weft-node", types.StrategicMergePatchType, annotate, metav1.PatchOptions{}, "status")
		// Allowed, and there is no such pod.
		if _, err := pods.Get(ctx, "no-such-pod", metav1.GetOptions{}); !apierrors.IsNotFound(err) {
			allowed["pods get"] = err
		}
		for what, err := range allowed {
			if err != nil {
				t.Errorf("weft's service account: %s: %v", what, err)
			}
		}
		denied := map[string]error{}
		_, denied["nodes patch"] = nodes.Patch(ctx, "weft-node", types.StrategicMergePatchType, annotate, metav1.PatchOptions{})
		denied["nodes delete"] = nodes.Delete(ctx, "flannel-node", metav1.DeleteOptions{})
		_, denied["pods list"] = pods.List(ctx, metav1.ListOptions{})
		_, denied["configmaps get"] = sa.CoreV1().ConfigMaps(m.Config.Namespace).Get(ctx, m.Config.Name, metav1.GetOptions{})
		_, denied["secrets list"] = sa.CoreV1().Secrets("kube-system").List(ctx, metav1.ListOptions{})
		for what, err := range denied {
			if !apierrors.IsForbidden(err) {
				t.Errorf("weft's service account: %s: %v, want forbidden", what, err)
			}
		}
	})

	t.Run("one agent per node", func(t *testing.T) {
		startDaemonSetController(t, cp)
		ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "kube-flannel",
			Labels: map[string]string{"pod-security.kubernetes.io/enforce": "privileged"}}}
		if _, err := cs.CoreV1().Namespaces().Create(ctx, ns, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		fl := flannelDaemonSet()
		if _, err := cs.AppsV1().DaemonSets(fl.Namespace).Create(ctx, fl, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		// As the README says: kubectl patch, a strategic merge patch.
		_, err := cs.AppsV1().DaemonSets(fl.Namespace).Patch(ctx, fl.Name, types.StrategicMergePatchType, readFlannelPatch(t), metav1.PatchOptions{})
		if err != nil {
			t.Fatalf("flannel-patch.yaml: %v", err)
		}
		want := map[string]string{"weft-node": "weft", "flannel-node": "flannel"}
		var got map[string]string
		deadline := time.Now().Add(2 * time.Minute)
		for {
			got = map[string]string{}
			for agent, ds := range map[string]*appsv1.DaemonSet{"weft": m.DaemonSet, "flannel": fl} {
				sel := metav1.FormatLabelSelector(ds.Spec.Selector)
				list, err := cs.CoreV1().Pods(ds.Namespace).List(ctx, metav1.ListOptions{LabelSelector: sel})
				if err != nil {
					t.Fatal(err)
				}
				for _, p := range list.Items {
					node := podNode(p)
					if prev, ok := got[node]; ok && prev != agent {
						t.Fatalf("node %s has a %s pod and a %s pod", node, prev, agent)
					}
					got[node] = agent
				}
			}
			if len(got) >= len(want) || time.Now().After(deadline) {
				break
			}
			time.Sleep(time.Second)
		}
		if len(got) != len(want) || got["weft-node"] != "weft" || got["flannel-node"] != "flannel" {
			t.Errorf("agents by node %v, want %v (no pod for the windows node)", got, want)
		}
	})
}

// podNode is the node a DaemonSet pod is for: the controller pins it with
// a metadata.name node affinity, for the scheduler to bind.
func podNode(p corev1.Pod) string {
	if p.Spec.NodeName != "" {
		return p.Spec.NodeName
	}
	a := p.Spec.Affinity
	if a == nil || a.NodeAffinity == nil || a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution == nil {
		return ""
	}
	for _, term := range a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms {
		for _, f := range term.MatchFields {
			if f.Key == "metadata.name" && f.Operator == corev1.NodeSelectorOpIn && len(f.Values) == 1 {
				return f.Values[0]
			}
		}
	}
	return ""
}

// startDaemonSetController runs a kube-controller-manager with only the
// DaemonSet controller, which kubecp's own leaves out, beside it; it is
// stopped when t ends.
func startDaemonSetController(t *testing.T, cp *kubecp.ControlPlane) {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), "daemonset-controller.log")
	logFile, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(filepath.Join(kubetest.BinDir(t), kubecp.ControllerManagerBinary),
		"--kubeconfig="+cp.AdminKubeconfig(), "--leader-elect=false",
		"--controllers=daemonset-controller", "--secure-port=0")
	cmd.Stdout, cmd.Stderr = logFile, logFile
	// Killed with the test binary, even when it dies without cleanups.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		logFile.Close()
		if t.Failed() {
			if log, err := os.ReadFile(logPath); err == nil {
				if len(log) > 4000 {
					log = log[len(log)-4000:]
				}
				t.Logf("daemonset controller log (tail):\n%s", log)
			}
		}
	})
}
