// Package kube holds weft's Kubernetes manifest (weft.yml) and the patch
// that keeps flannel's DaemonSet off weft's nodes; its tests check both
// against what weft's binaries and image actually accept.
package kube

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/apimachinery/pkg/util/strategicpatch"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/yaml"

	"github.com/weft-net/weft/internal/agentflags"
	"github.com/weft-net/weft/internal/cni"
	"github.com/weft-net/weft/internal/config"
	"github.com/weft-net/weft/internal/lease/kubestore"
)

// AgentLabel is the node label that moves a node from flannel to weft.
const (
	AgentLabel = "weft.io/agent"
	AgentWeft  = "weft"
)

// manifest is weft.yml, decoded strictly into the API types.
type manifest struct {
	docs [][]byte // each object as written, in order

	Namespace   *corev1.Namespace
	Role        *rbacv1.ClusterRole
	Binding     *rbacv1.ClusterRoleBinding
	Account     *corev1.ServiceAccount
	Config      *corev1.ConfigMap
	DaemonSet   *appsv1.DaemonSet
	kindsInFile []string
}

func loadManifest(t *testing.T) *manifest {
	t.Helper()
	data, err := os.ReadFile("weft.yml")
	if err != nil {
		t.Fatal(err)
	}
	m := &manifest{}
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	for {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("weft.yml: %v", err)
		}
		var tm metav1.TypeMeta
		if err := yaml.Unmarshal(doc, &tm); err != nil {
			t.Fatalf("weft.yml: %v", err)
		}
		if tm.Kind == "" {
			if len(bytes.TrimSpace(stripComments(doc))) == 0 {
				continue // the header comment
			}
			t.Fatalf("weft.yml: object without kind:\n%s", doc)
		}
		var dst any
		switch tm.APIVersion + " " + tm.Kind {
		case "v1 Namespace":
			dst = into(&m.Namespace)
		case "rbac.authorization.k8s.io/v1 ClusterRole":
			dst = into(&m.Role)
		case "rbac.authorization.k8s.io/v1 ClusterRoleBinding":
			dst = into(&m.Binding)
		case "v1 ServiceAccount":
			dst = into(&m.Account)
		case "v1 ConfigMap":
			dst = into(&m.Config)
		case "apps/v1 DaemonSet":
			dst = into(&m.DaemonSet)
		default:
			t.Fatalf("weft.yml: unexpected object %s %s", tm.APIVersion, tm.Kind)
		}
		if err := yaml.UnmarshalStrict(doc, dst); err != nil {
			t.Fatalf("weft.yml: %s: %v", tm.Kind, err)
		}
		m.docs = append(m.docs, doc)
		m.kindsInFile = append(m.kindsInFile, tm.Kind)
	}
	want := []string{"Namespace", "ClusterRole", "ClusterRoleBinding", "ServiceAccount", "ConfigMap", "DaemonSet"}
	if !slices.Equal(m.kindsInFile, want) {
		t.Fatalf("weft.yml has %v, want one each of %v in that order (the namespace before what lives in it)", m.kindsInFile, want)
	}
	return m
}

// into points *field at a new T and returns it, to decode into.
func into[T any](field **T) *T {
	*field = new(T)
	return *field
}

// makeVar asks make for the value of a Makefile target's output.
func makeVar(t *testing.T, target string) string {
	t.Helper()
	if _, err := exec.LookPath("make"); err != nil {
		t.Skip("make is not installed")
	}
	out, err := exec.Command("make", "-s", "--no-print-directory", "-C", repoRoot(t), target).Output()
	if err != nil {
		t.Fatalf("make %s: %v", target, err)
	}
	return strings.TrimSpace(string(out))
}

func repoRoot(t *testing.T) string {
	t.Helper()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	return root
}

func TestManifestRBAC(t *testing.T) {
	m := loadManifest(t)
	ns := m.Namespace.Name
	if got := m.Namespace.Labels["pod-security.kubernetes.io/enforce"]; got != "privileged" {
		t.Errorf("namespace %s: pod-security enforce = %q, want privileged (hostNetwork, hostPath, NET_ADMIN)", ns, got)
	}
	for _, o := range []metav1.Object{m.Account, m.Config, m.DaemonSet} {
		if o.GetNamespace() != ns {
			t.Errorf("%s is in namespace %q, want %q", o.GetName(), o.GetNamespace(), ns)
		}
	}

	// Exactly what the Kubernetes subnet manager calls, as flannel's role.
	type grant struct{ group, resource, verb string }
	var got []grant
	for _, r := range m.Role.Rules {
		if len(r.ResourceNames) > 0 || len(r.NonResourceURLs) > 0 {
			t.Errorf("rule %+v: resourceNames/nonResourceURLs are not expected", r)
		}
		for _, g := range r.APIGroups {
			for _, res := range r.Resources {
				for _, v := range r.Verbs {
					got = append(got, grant{g, res, v})
				}
			}
		}
	}
	want := []grant{{"", "nodes", "get"}, {"", "nodes", "list"}, {"", "nodes", "watch"},
		{"", "nodes/status", "patch"}, {"", "pods", "get"}}
	slices.SortFunc(got, func(a, b grant) int { return strings.Compare(a.resource+" "+a.verb, b.resource+" "+b.verb) })
	if !slices.Equal(got, want) {
		t.Errorf("ClusterRole %s grants %v, want exactly %v", m.Role.Name, got, want)
	}

	b := m.Binding
	if b.RoleRef != (rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: m.Role.Name}) {
		t.Errorf("ClusterRoleBinding roleRef = %+v, want ClusterRole %s", b.RoleRef, m.Role.Name)
	}
	wantSub := []rbacv1.Subject{{Kind: "ServiceAccount", Name: m.Account.Name, Namespace: ns}}
	if !reflect.DeepEqual(b.Subjects, wantSub) {
		t.Errorf("ClusterRoleBinding subjects = %+v, want %+v", b.Subjects, wantSub)
	}
	if sa := m.DaemonSet.Spec.Template.Spec.ServiceAccountName; sa != m.Account.Name {
		t.Errorf("DaemonSet runs as service account %q, want %q", sa, m.Account.Name)
	}
}

func TestManifestConfigMap(t *testing.T) {
	m := loadManifest(t)
	var got, want any
	if err := json.Unmarshal([]byte(m.Config.Data["cni-conf.json"]), &got); err != nil {
		t.Fatalf("cni-conf.json: %v", err)
	}
	if err := json.Unmarshal([]byte(cni.FlannelConflist), &want); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("cni-conf.json = %v, want flannel's conflist %s", got, cni.FlannelConflist)
	}
	n, warnings, err := config.Parse([]byte(m.Config.Data["net-conf.json"]))
	if err != nil {
		t.Fatalf("net-conf.json: %v", err)
	}
	if len(warnings) > 0 {
		t.Errorf("net-conf.json: warnings %v", warnings)
	}
	if n.Network.String() != "10.244.0.0/16" || n.Backend.Type != config.BackendVXLAN || n.EnableNFTables {
		t.Errorf("net-conf.json = %+v, want kube-flannel.yml's 10.244.0.0/16, vxlan, iptables", n)
	}
	if len(m.Config.Data) != 2 {
		t.Errorf("ConfigMap keys %v, want cni-conf.json and net-conf.json", m.Config.Data)
	}
}

func TestManifestDaemonSet(t *testing.T) {
	m := loadManifest(t)
	ds := m.DaemonSet
	pod := ds.Spec.Template.Spec
	sel, err := metav1.LabelSelectorAsSelector(ds.Spec.Selector)
	if err != nil || sel.Empty() || !sel.Matches(labels.Set(ds.Spec.Template.Labels)) {
		t.Errorf("selector %v does not select the pod template's labels %v", ds.Spec.Selector, ds.Spec.Template.Labels)
	}
	if !pod.HostNetwork {
		t.Error("hostNetwork is off: the agent programs the node's network")
	}
	if pod.PriorityClassName != "system-node-critical" {
		t.Errorf("priorityClassName = %q, want system-node-critical", pod.PriorityClassName)
	}
	if !slices.Contains(pod.Tolerations, corev1.Toleration{Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule}) {
		t.Errorf("tolerations %+v lack operator Exists, effect NoSchedule", pod.Tolerations)
	}
	for _, node := range []struct {
		labels map[string]string
		want   bool
	}{
		{map[string]string{"kubernetes.io/os": "linux", AgentLabel: AgentWeft}, true},
		{map[string]string{"kubernetes.io/os": "linux"}, false},
		{map[string]string{"kubernetes.io/os": "linux", AgentLabel: "flannel"}, false},
		{map[string]string{"kubernetes.io/os": "windows", AgentLabel: AgentWeft}, false},
	} {
		if got := selectsNode(t, pod.Affinity, node.labels); got != node.want {
			t.Errorf("node with labels %v: weft scheduled = %v, want %v", node.labels, got, node.want)
		}
	}

	image := makeVar(t, "print-image")
	all := append(slices.Clone(pod.InitContainers), pod.Containers...)
	for _, c := range all {
		if c.Image != image {
			t.Errorf("container %s runs image %q, the Makefile's `make image` builds %q", c.Name, c.Image, image)
		}
		sc := c.SecurityContext
		if sc != nil && sc.Privileged != nil && *sc.Privileged {
			t.Errorf("container %s is privileged", c.Name)
		}
	}
	if len(pod.Containers) != 1 {
		t.Fatalf("%d containers, want one (weftd)", len(pod.Containers))
	}
	agent := pod.Containers[0]
	if sc := agent.SecurityContext; sc == nil || sc.Privileged == nil || *sc.Privileged || sc.Capabilities == nil ||
		!slices.Equal(sc.Capabilities.Add, []corev1.Capability{"NET_ADMIN", "NET_RAW"}) || len(sc.Capabilities.Drop) > 0 {
		t.Errorf("weftd securityContext = %+v, want privileged: false with capabilities NET_ADMIN and NET_RAW", sc)
	}
	for _, c := range pod.InitContainers {
		if sc := c.SecurityContext; sc != nil && sc.Capabilities != nil && len(sc.Capabilities.Add) > 0 {
			t.Errorf("init container %s adds capabilities %v: it only writes files", c.Name, sc.Capabilities.Add)
		}
	}

	// The host paths flannel uses, so that either agent finds the other's
	// files on a node.
	wantHost := map[string]corev1.HostPathVolumeSource{
		"/run/flannel":      {Path: "/run/flannel"},
		"/opt/cni/bin":      {Path: "/opt/cni/bin"},
		"/etc/cni/net.d":    {Path: "/etc/cni/net.d"},
		"/run/xtables.lock": {Path: "/run/xtables.lock", Type: ptr(corev1.HostPathFileOrCreate)},
	}
	vols := map[string]corev1.Volume{}
	gotHost := map[string]corev1.HostPathVolumeSource{}
	for _, v := range pod.Volumes {
		vols[v.Name] = v
		if v.HostPath != nil {
			gotHost[v.HostPath.Path] = *v.HostPath
		}
	}
	if !reflect.DeepEqual(gotHost, wantHost) {
		t.Errorf("host paths %+v, want %+v", gotHost, wantHost)
	}

	// weftd: flags it accepts, health on the probed port, files where the
	// mounts put them.
	if !slices.Equal(agent.Command, []string{"/opt/bin/weftd"}) {
		t.Errorf("weftd command = %v", agent.Command)
	}
	// The environment the pod gets, downward API values filled in as the
	// kubelet would.
	fromField := map[string]string{"spec.nodeName": "node-1", "metadata.name": "kube-weft-ds-x1", "metadata.namespace": m.DaemonSet.Namespace}
	var environ []string
	env := map[string]string{}
	for _, e := range agent.Env {
		v := e.Value
		if e.ValueFrom != nil {
			if e.ValueFrom.FieldRef == nil {
				t.Fatalf("env %s: only downward API fields are expected: %+v", e.Name, e.ValueFrom)
			}
			v = fromField[e.ValueFrom.FieldRef.FieldPath]
		}
		env[e.Name] = v
		environ = append(environ, e.Name+"="+v)
	}
	var out bytes.Buffer
	settings, err := agentflags.Parse(agent.Args, environ, &out)
	if err != nil {
		t.Fatalf("weftd %v: %v\n%s", agent.Args, err, out.String())
	}
	if len(settings.Warnings) > 0 {
		t.Errorf("weftd %v warns: %v", agent.Args, settings.Warnings)
	}
	o := settings.Options
	if !o.KubeSubnetMgr || !o.IPMasq {
		t.Errorf("weftd runs with --kube-subnet-mgr=%v --ip-masq=%v, want both", o.KubeSubnetMgr, o.IPMasq)
	}
	port := strconv.Itoa(o.HealthzPort)
	var named *corev1.ContainerPort
	for i, p := range agent.Ports {
		if p.Name == "healthz" {
			named = &agent.Ports[i]
		}
	}
	if named == nil || port == "0" || named.ContainerPort != int32(atoi(t, port)) || named.Protocol != corev1.ProtocolTCP {
		t.Errorf("--healthz-port=%s, container port healthz = %+v: they must agree", port, named)
	}
	for _, p := range []struct {
		name  string
		probe *corev1.Probe
		path  string
	}{{"liveness", agent.LivenessProbe, "/healthz"}, {"readiness", agent.ReadinessProbe, "/readyz"}} {
		if p.probe == nil || p.probe.HTTPGet == nil || p.probe.HTTPGet.Path != p.path || p.probe.HTTPGet.Port.String() != "healthz" {
			t.Errorf("%s probe = %+v, want GET %s on port healthz", p.name, p.probe, p.path)
		}
	}
	req := agent.Resources.Requests
	if req.Cpu().Cmp(resource.MustParse("100m")) != 0 || req.Memory().Cmp(resource.MustParse("50Mi")) != 0 {
		t.Errorf("weftd requests %v, want cpu 100m and memory 50Mi as flannel", req)
	}
	for name, field := range map[string]string{"NODE_NAME": "spec.nodeName", "POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace"} {
		if env[name] != fromField[field] {
			t.Errorf("env %s = %q, want the downward API's %s", name, env[name], field)
		}
	}
	// What the Kubernetes store reads from that environment.
	var ko kubestore.Options
	if err := ko.FromEnv(func(k string) string { return env[k] }); err != nil {
		t.Fatalf("kubestore: %v", err)
	}
	if ko.NodeName != "node-1" || ko.EventQueueDepth != 5000 || ko.ContinueWhenCacheNotReady {
		t.Errorf("kubestore options from the pod's env: node %q, queue %d, continue when not synced %v; want node-1, 5000 (flannel's), false",
			ko.NodeName, ko.EventQueueDepth, ko.ContinueWhenCacheNotReady)
	}
	inMount(t, agent, vols, m.Config, o.NetConfigPath, true)
	inMount(t, agent, vols, nil, o.SubnetFile, false)
	inMount(t, agent, vols, nil, "/run/xtables.lock", false)

	// Init containers: install-cni with flags it has, plugin into the
	// host's CNI bin dir and the ConfigMap's conflist into its conf dir.
	var plugin, conflist bool
	for _, c := range pod.InitContainers {
		if !slices.Equal(c.Command, []string{"/opt/bin/weft", "install-cni"}) {
			t.Errorf("init container %s runs %v, want weft install-cni", c.Name, c.Command)
			continue
		}
		args := installArgs(t, c.Args)
		if d := args["cni-bin-dir"]; d != "" {
			plugin = true
			if mountedHostPath(c, vols, d) != cni.DefaultBinDir {
				t.Errorf("init container %s installs the plugin into %s, not the host's %s", c.Name, d, cni.DefaultBinDir)
			}
		}
		if d := args["cni-conf-dir"]; d != "" {
			conflist = true
			if mountedHostPath(c, vols, d) != cni.DefaultConfDir {
				t.Errorf("init container %s installs the conflist into %s, not the host's %s", c.Name, d, cni.DefaultConfDir)
			}
			if args["cni-conf-name"] != cni.DefaultConfName {
				t.Errorf("conflist name %q, want flannel's %s", args["cni-conf-name"], cni.DefaultConfName)
			}
			inMount(t, c, vols, m.Config, args["conflist"], true)
			if path.Base(args["conflist"]) != "cni-conf.json" {
				t.Errorf("--conflist %s is not the ConfigMap's cni-conf.json", args["conflist"])
			}
		}
	}
	if !plugin || !conflist {
		t.Errorf("init containers install plugin: %v, conflist: %v; want both", plugin, conflist)
	}
}

// installFlags are the flags of `weft install-cni` (cmd/weft/installcni.go).
var installFlags = []string{"cni-conf-dir", "cni-conf-name", "conflist", "cni-bin-dir", "plugin"}

func installArgs(t *testing.T, args []string) map[string]string {
	t.Helper()
	got := map[string]string{"cni-conf-dir": cni.DefaultConfDir, "cni-conf-name": cni.DefaultConfName, "cni-bin-dir": cni.DefaultBinDir}
	for _, a := range args {
		k, v, ok := strings.Cut(strings.TrimLeft(a, "-"), "=")
		if !ok || !strings.HasPrefix(a, "-") || !slices.Contains(installFlags, k) {
			t.Fatalf("install-cni argument %q: want --flag=value with one of %v", a, installFlags)
		}
		got[k] = v
	}
	return got
}

// inMount checks that file is inside one of c's mounts; with cm, the mount
// must be that ConfigMap's and the file one of its keys.
func inMount(t *testing.T, c corev1.Container, vols map[string]corev1.Volume, cm *corev1.ConfigMap, file string, wantCM bool) {
	t.Helper()
	for _, vm := range c.VolumeMounts {
		dir := strings.TrimSuffix(vm.MountPath, "/")
		if file != dir && !strings.HasPrefix(file, dir+"/") {
			continue
		}
		v := vols[vm.Name]
		if !wantCM {
			return
		}
		if v.ConfigMap == nil || v.ConfigMap.Name != cm.Name {
			t.Errorf("%s: %s is mounted from %+v, want ConfigMap %s", c.Name, file, v.VolumeSource, cm.Name)
			return
		}
		if _, ok := cm.Data[strings.TrimPrefix(file, dir+"/")]; !ok {
			t.Errorf("%s: %s is no key of ConfigMap %s", c.Name, file, cm.Name)
		}
		return
	}
	t.Errorf("%s: %s is in none of its mounts %+v", c.Name, file, c.VolumeMounts)
}

// mountedHostPath is the host path c sees at dir ("" if none).
func mountedHostPath(c corev1.Container, vols map[string]corev1.Volume, dir string) string {
	for _, vm := range c.VolumeMounts {
		if strings.TrimSuffix(vm.MountPath, "/") == strings.TrimSuffix(dir, "/") {
			if hp := vols[vm.Name].HostPath; hp != nil {
				return hp.Path
			}
		}
	}
	return ""
}

// selectsNode evaluates a pod's required node affinity against node labels
// as the scheduler does: terms ORed, expressions within a term ANDed.
func selectsNode(t *testing.T, a *corev1.Affinity, nodeLabels map[string]string) bool {
	t.Helper()
	if a == nil || a.NodeAffinity == nil || a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution == nil {
		t.Fatal("no required node affinity")
	}
	for _, term := range a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms {
		sel := labels.NewSelector()
		for _, e := range term.MatchExpressions {
			op := map[corev1.NodeSelectorOperator]selection.Operator{
				corev1.NodeSelectorOpIn: selection.In, corev1.NodeSelectorOpNotIn: selection.NotIn,
				corev1.NodeSelectorOpExists: selection.Exists, corev1.NodeSelectorOpDoesNotExist: selection.DoesNotExist,
			}[e.Operator]
			r, err := labels.NewRequirement(e.Key, op, e.Values)
			if err != nil {
				t.Fatalf("node selector %+v: %v", e, err)
			}
			sel = sel.Add(*r)
		}
		if len(term.MatchFields) > 0 {
			t.Fatalf("matchFields are not expected: %+v", term.MatchFields)
		}
		if sel.Matches(labels.Set(nodeLabels)) {
			return true
		}
	}
	return false
}

// TestFlannelPatch applies flannel-patch.yaml to a DaemonSet shaped as
// kube-flannel.yml's and checks that every Linux node then runs exactly
// one of the two agents, decided by the label alone.
func TestFlannelPatch(t *testing.T) {
	m := loadManifest(t)
	flannel := flannelDaemonSet()
	patch := readFlannelPatch(t)
	orig, err := json.Marshal(flannel)
	if err != nil {
		t.Fatal(err)
	}
	out, err := strategicpatch.StrategicMergePatch(orig, patch, appsv1.DaemonSet{})
	if err != nil {
		t.Fatalf("flannel-patch.yaml: %v", err)
	}
	var patched appsv1.DaemonSet
	if err := json.Unmarshal(out, &patched); err != nil {
		t.Fatal(err)
	}
	// Only the affinity changes.
	want := flannel.DeepCopy()
	want.Spec.Template.Spec.Affinity = patched.Spec.Template.Spec.Affinity
	if !reflect.DeepEqual(&patched, want) {
		t.Errorf("the patch changed more than flannel's affinity:\n%s", out)
	}
	for _, v := range []string{"", AgentWeft, "flannel", "other"} {
		node := map[string]string{"kubernetes.io/os": "linux"}
		if v != "" {
			node[AgentLabel] = v
		}
		w := selectsNode(t, m.DaemonSet.Spec.Template.Spec.Affinity, node)
		f := selectsNode(t, patched.Spec.Template.Spec.Affinity, node)
		if w == f {
			t.Errorf("node %v: weft %v, flannel %v; want exactly one", node, w, f)
		}
		if w != (v == AgentWeft) {
			t.Errorf("node %v: weft %v", node, w)
		}
	}
	// Applying it twice changes nothing.
	again, err := strategicpatch.StrategicMergePatch(out, patch, appsv1.DaemonSet{})
	if err != nil || !bytes.Equal(again, out) {
		t.Errorf("the patch is not idempotent: %v\n%s", err, again)
	}
}

func readFlannelPatch(t *testing.T) []byte {
	t.Helper()
	y, err := os.ReadFile("flannel-patch.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var probe appsv1.DaemonSet
	if err := yaml.UnmarshalStrict(y, &probe); err != nil {
		t.Fatalf("flannel-patch.yaml: %v", err)
	}
	patch, err := yaml.YAMLToJSON(y)
	if err != nil {
		t.Fatal(err)
	}
	return patch
}

// flannelDaemonSet is a DaemonSet with the fields of kube-flannel.yml's
// that the patch and the scheduler look at.
func flannelDaemonSet() *appsv1.DaemonSet {
	return &appsv1.DaemonSet{
		TypeMeta:   metav1.TypeMeta{APIVersion: "apps/v1", Kind: "DaemonSet"},
		ObjectMeta: metav1.ObjectMeta{Name: "kube-flannel-ds", Namespace: "kube-flannel", Labels: map[string]string{"app": "flannel"}},
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "flannel"}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "flannel", "tier": "node"}},
				Spec: corev1.PodSpec{
					Affinity: &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{
						RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{
							NodeSelectorTerms: []corev1.NodeSelectorTerm{{MatchExpressions: []corev1.NodeSelectorRequirement{
								{Key: "kubernetes.io/os", Operator: corev1.NodeSelectorOpIn, Values: []string{"linux"}},
							}}},
						},
					}},
					HostNetwork: true,
					Tolerations: []corev1.Toleration{{Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule}},
					Containers: []corev1.Container{{
						Name: "kube-flannel", Image: "ghcr.io/flannel-io/flannel:v0.28.9",
						Command: []string{"/opt/bin/flanneld"}, Args: []string{"--ip-masq", "--kube-subnet-mgr"},
					}},
				},
			},
		},
	}
}

// TestReadmeShowsPatch keeps the README's migration steps on the files they
// name.
func TestReadmeShowsPatch(t *testing.T) {
	readme, err := os.ReadFile(filepath.Join(repoRoot(t), "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range []string{
		"kubectl -n kube-flannel patch ds kube-flannel-ds --patch-file deploy/kube/flannel-patch.yaml",
		"kubectl label node NODE " + AgentLabel + "=" + AgentWeft,
		"kubectl apply -f deploy/kube/weft.yml",
		"make image",
	} {
		if !bytes.Contains(readme, []byte(s)) {
			t.Errorf("README.md does not show %q", s)
		}
	}
}

func ptr[T any](v T) *T { return &v }

func atoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// TestObjects checks the decoder the lab applies the manifest with: the
// same objects as the strict reading above, and a misspelt field refused.
func TestObjects(t *testing.T) {
	objs, err := Objects()
	if err != nil {
		t.Fatal(err)
	}
	var kinds []string
	for _, o := range objs {
		kinds = append(kinds, reflect.TypeOf(o).Elem().Name())
	}
	if want := loadManifest(t).kindsInFile; !slices.Equal(kinds, want) {
		t.Errorf("Objects: %v, want %v", kinds, want)
	}
	if _, err := decode([]byte("apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: x\n  namspace: y\n")); err == nil || !strings.Contains(err.Error(), "namspace") {
		t.Errorf("misspelt field: %v, want an error naming it", err)
	}
}
